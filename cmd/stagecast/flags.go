package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/serve"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// parse parses args (flags may come before, between or after positional
// arguments), then fills every flag not given on the command line from
// STAGECAST_<NAME> in the environment. Positional arguments are in positional(fs).
func parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	positionals[fs] = pos
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "STAGECAST_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

var positionals = map[*flag.FlagSet][]string{}

// positional returns the non-flag arguments parse found.
func positional(fs *flag.FlagSet) []string { return positionals[fs] }

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "dev-" + hex.EncodeToString(b)
}

// proxyFlags registers the proxy's tunables on fs, with proxy.DefaultConfig's defaults.
func proxyFlags(fs *flag.FlagSet, c *proxy.Config) {
	d := proxy.DefaultConfig() // the defaults, typed once
	fs.StringVar(&c.ID, "proxy-id", "", "proxy id in delivery reports (default hostname-pid)")
	fs.IntVar(&c.MaxConnections, "max-connections", d.MaxConnections, "most devices this proxy holds")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", d.MaxSubscriptions, "most events per device connection")
	fs.Float64Var(&c.AdmitRate, "admit-rate", d.AdmitRate, "new connections per second admitted (503 + Retry-After above)")
	fs.IntVar(&c.AdmitBurst, "admit-burst", d.AdmitBurst, "burst of new connections admitted")
	fs.DurationVar(&c.RetryAfter, "retry-after", d.RetryAfter, "a refused upgrade (503, 429) carries Retry-After U(this, 2x this), rounded to seconds: how soon a connect storm's refused devices come back")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", d.WriteTimeout, "a device that cannot take a frame this long is closed (4000)")
	fs.DurationVar(&c.PingInterval, "ping-interval", d.PingInterval, "WebSocket ping interval")
	fs.DurationVar(&c.PongTimeout, "pong-timeout", d.PongTimeout, "close devices that do not answer a ping in this time (4001)")
	fs.DurationVar(&c.DrainWindow, "drain-window", d.DrainWindow, "on SIGTERM, spread devices' reconnects over this window")
	fs.DurationVar(&c.ReconnectJitter, "reconnect-jitter", d.ReconnectJitter, "max after_ms of reconnect frames")
	fs.IntVar(&c.Writers, "writers", d.Writers, "writer goroutines kept (4*GOMAXPROCS, min 8)")
	fs.IntVar(&c.PacedRate, "paced-rate", d.PacedRate, "devices per second a paced stage change is released to (halved while the prefetch tier sheds, a fifth while it sheds critical work)")
	fs.StringVar(&c.PublicURL, "public-url", "", "where devices reach this proxy (ws://host:port/v1/ws), published so draining proxies direct devices here; empty: never a drain target")
	fs.DurationVar(&c.MaxClockSkew, "max-clock-skew", d.MaxClockSkew, "armed stages fire from this proxy's clock only within this of Redis's")
	fs.BoolVar(&c.TrustDeviceIDs, "trust-device-ids", false, "give devices without a token the notes of the ?device= inbox (only where ids cannot be impersonated; make run does)")
	fs.IntVar(&c.MaxPendingNotes, "max-pending-notes", d.MaxPendingNotes, "notes queued per connection: low shed past half, slow devices closed past it")
	fs.IntVar(&c.ResumeBudget, "resume-budget", d.ResumeBudget, "inbox ops (resumes) per connection per minute")
	fs.IntVar(&c.MaxFramesPerSecond, "max-frames-per-second", d.MaxFramesPerSecond, "device frames per second per connection; above it rate_limited, at 10x closed (1008)")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", d.ReconcileInterval, "each event re-reads its recent stages this often (jittered): a safety net under pub/sub")
	fs.DurationVar(&c.EngineLostAfter, "engine-lost-after", d.EngineLostAfter, "when every write to Redis has failed this long, /readyz fails (new devices go elsewhere) while connected devices stay; when Redis answers again every event re-reads its history")
	fs.IntVar(&c.MaxEvents, "max-events", d.MaxEvents, "most events (engine subscriptions) this proxy holds; subs past it get event_limit")
	fs.IntVar(&c.SubscribeBudget, "subscribe-budget", d.SubscribeBudget, "new subscriptions per connection per minute; past it rate_limited")
	fs.IntVar(&c.MaxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "concurrent connections from one source IP (429 above; negative: off)")
	fs.Float64Var(&c.IPAdmitRate, "ip-admit-rate", d.IPAdmitRate, "new connections per second from one source IP (429 above; negative: off)")
	fs.IntVar(&c.IPAdmitBurst, "ip-admit-burst", d.IPAdmitBurst, "burst of new connections from one source IP")
	fs.Func("ip-limit-exempt", "comma-separated CIDRs whose sources skip the per-IP limits (e.g. a load generator's 127.0.0.0/8)", func(v string) error {
		c.IPLimitExempt = nil
		for _, p := range splitAddrs(v) {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			c.IPLimitExempt = append(c.IPLimitExempt, pfx)
		}
		return nil
	})
	fs.Func("origin-patterns", "comma-separated browser origins allowed to connect besides the proxy's own host (e.g. *.example.com); native devices send no Origin", func(v string) error {
		c.OriginPatterns = splitAddrs(v)
		return nil
	})
	fs.Func("drain-targets", "comma-separated host patterns (e.g. *.px.example.com) of proxies a directed drain may send devices to; empty: any host, never wss -> ws", func(v string) error {
		c.DrainTargets = splitAddrs(v)
		return nil
	})
}

// deviceKeyFlags registers --device-keys and --require-device-token.
type deviceKeyFlags struct {
	file    string
	require bool
}

func (d *deviceKeyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.file, "device-keys", "", "JWKS file of device-token public keys (several keys = rotation; re-read when it changes)")
	fs.BoolVar(&d.require, "require-device-token", false, "refuse devices without a valid device token (401); needs --device-keys")
}

// apply loads the key set (when --device-keys is set), keeps it fresh until ctx
// ends, and configures token checks of the proxy and/or prefetch server given.
func (d *deviceKeyFlags) apply(ctx context.Context, log *slog.Logger, pc *proxy.Config, ic *prefetch.IdentityConfig) error {
	ver, err := d.verifier(ctx, log)
	if err != nil {
		return err
	}
	if pc != nil {
		pc.RequireToken = d.require
		if ver != nil {
			pc.Tokens = ver
		}
	}
	if ic != nil {
		ic.Require = d.require
		if ver != nil {
			ic.Tokens = devicetoken.NewCache(ver, 65536)
		}
	}
	return nil
}

// verifier loads the key set (nil when --device-keys is not set) and keeps it
// fresh until ctx ends.
func (d *deviceKeyFlags) verifier(ctx context.Context, log *slog.Logger) (*devicetoken.Verifier, error) {
	if d.file == "" {
		if d.require {
			return nil, errors.New("--require-device-token needs --device-keys")
		}
		return nil, nil
	}
	v, err := devicetoken.LoadVerifier(d.file)
	if err != nil {
		return nil, err
	}
	log.Info("device keys loaded", "file", d.file, "kids", v.KeyIDs(), "required", d.require)
	v.Watch(ctx, d.file, 10*time.Second, log)
	return v, nil
}

// debugFlag registers --debug-addr: net/http/pprof on its own address (off by
// default; bind it to loopback).
func debugFlag(fs *flag.FlagSet) *string {
	return fs.String("debug-addr", "", "serve /debug/pprof on this address (e.g. 127.0.0.1:6060); off when empty")
}

// debugServer returns the pprof server to run beside the main ones, if asked for.
func debugServer(addr string) []serve.Server {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return []serve.Server{{Name: "debug", Addr: addr, Handler: mux}}
}

// redisOpts are the Redis connection flags every server shares.
type redisOpts struct {
	addrs, passwordFile         string
	tls, tlsInsecure            bool
	tlsCA, tlsServerName        string
	tlsClientCert, tlsClientKey string
}

func redisFlags(fs *flag.FlagSet, c *redisengine.Config) *redisOpts {
	o := &redisOpts{}
	fs.StringVar(&o.addrs, "redis", "127.0.0.1:6379", "Redis address(es), comma-separated (one node is enough for a cluster)")
	fs.StringVar(&c.Username, "redis-user", "", "Redis ACL user (AUTH user password)")
	fs.StringVar(&c.Password, "redis-password", "", "Redis password (prefer --redis-password-file: flags show in ps)")
	fs.StringVar(&o.passwordFile, "redis-password-file", "", "read the Redis password from this file")
	fs.BoolVar(&o.tls, "redis-tls", false, "connect to Redis over TLS")
	fs.StringVar(&o.tlsCA, "redis-tls-ca", "", "PEM file of the CA(s) that sign Redis's certificate (default: the system pool)")
	fs.StringVar(&o.tlsServerName, "redis-tls-server-name", "", "name to verify in Redis's certificate (default: the address's host)")
	fs.StringVar(&o.tlsClientCert, "redis-tls-cert", "", "client certificate (PEM) for mutual TLS")
	fs.StringVar(&o.tlsClientKey, "redis-tls-key", "", "client key (PEM) for mutual TLS")
	fs.BoolVar(&o.tlsInsecure, "redis-tls-insecure-skip-verify", false, "do not verify Redis's certificate (tests only)")
	fs.IntVar(&c.WaitReplicas, "redis-wait-replicas", 0, "confirm a stage change only once this many replicas have it (WAIT); 0: Redis's asynchronous replication")
	fs.DurationVar(&c.WaitTimeout, "redis-wait-timeout", redisengine.DefaultConfig().WaitTimeout, "how long a stage change waits for --redis-wait-replicas")
	fs.DurationVar(&c.ConnTimeout, "redis-conn-timeout", redisengine.DefaultConfig().ConnTimeout, "close and redial a Redis connection that answers nothing (not even the client's PING) for this long: how soon a silent partition is noticed")
	fs.Func("redis-addr-map", "comma-separated from=to pairs (host:port each): when Redis names node <from> (CLUSTER SLOTS, redirects), dial <to>: Redis behind NAT, port forwards or tunnels", func(v string) error {
		if c.AddrMap == nil {
			c.AddrMap = map[string]string{}
		}
		for _, pair := range strings.Split(v, ",") {
			from, to, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok || from == "" || to == "" {
				return fmt.Errorf("%q is not from=to", pair)
			}
			c.AddrMap[from] = to
		}
		return nil
	})
	return o
}

// apply fills the engine config from the flags: addresses, password file, TLS.
func (o *redisOpts) apply(c *redisengine.Config) error {
	c.Addrs = splitAddrs(o.addrs)
	if o.passwordFile != "" {
		b, err := os.ReadFile(o.passwordFile)
		if err != nil {
			return fmt.Errorf("--redis-password-file: %w", err)
		}
		c.Password = strings.TrimSpace(string(b))
	}
	if !o.tls {
		if o.tlsCA != "" || o.tlsClientCert != "" || o.tlsServerName != "" || o.tlsInsecure {
			return errors.New("--redis-tls-* options need --redis-tls")
		}
		return nil
	}
	tc, err := buildTLS("redis", o.tlsCA, o.tlsServerName, o.tlsClientCert, o.tlsClientKey, o.tlsInsecure)
	if err != nil {
		return err
	}
	c.TLS = tc
	return nil
}

// buildTLS is the client TLS config of the --<what>-tls-* flags: a CA file
// (default: the system pool), a server name, an optional client pair.
func buildTLS(what, caFile, serverName, certFile, keyFile string, insecure bool) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: insecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--%s-tls-ca: %w", what, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s-tls-ca %s: no PEM certificate in it", what, caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("--%s-tls-cert and --%s-tls-key go together", what, what)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s client certificate: %w", what, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// proxyProtocolFlag registers --proxy-protocol-from (serve.Server.ProxyProtocolFrom).
func proxyProtocolFlag(fs *flag.FlagSet) *[]netip.Prefix {
	var out []netip.Prefix
	fs.Func("proxy-protocol-from", "comma-separated CIDRs of L4 load balancers that send a PROXY protocol header (v1/v2), so per-IP limits see the device's address; a header from anyone else is refused; empty: off", func(v string) error {
		for _, p := range splitAddrs(v) {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			out = append(out, pfx)
		}
		return nil
	})
	return &out
}
