package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/demo"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/filewatch"
	"github.com/stagecast/stagecast/internal/serve"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// drainProxy is the SIGTERM path of a proxy: spread reconnects, then close.
func drainProxy(p *proxy.Server) func(context.Context) {
	return func(ctx context.Context) {
		if err := p.Drain(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "drain: %v\n", err)
		}
		p.Close()
	}
}

func runDev(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	proxyAddr := fs.String("proxy-addr", "127.0.0.1:8080", "devices' WebSocket address")
	bcAddr := fs.String("broadcaster-addr", "127.0.0.1:8081", "producers' HTTP address")
	pfAddr := fs.String("prefetch-addr", "127.0.0.1:8082", "devices' prefetch (GraphQL) address")
	kafkaAddr := fs.String("kafka-addr", "127.0.0.1:9092", "the in-process Kafka-protocol broker (kfake) the analytics stream goes to; off: none")
	debugAddr := debugFlag(fs)
	token := fs.String("producer-token", "", "producer bearer token (default: random, printed)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var pc proxy.Config
	proxyFlags(fs, &pc)
	var dk deviceKeyFlags
	dk.register(fs)
	// The dev server's devices (watch, loadgen live) all come from loopback.
	pc.IPLimitExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	// Everything is on loopback: device ids name their inbox without a token.
	pc.TrustDeviceIDs = true
	// Pages on loopback (the demo home screen on the prefetch port, an app's
	// dev server) may connect: a browser's Origin is another port.
	pc.OriginPatterns = append(pc.OriginPatterns, "127.0.0.1:*", "localhost:*")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *token == "" {
		*token = randomToken()
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	var ident prefetch.IdentityConfig
	if err := dk.apply(ctx, log, &pc, &ident); err != nil {
		return err
	}
	pc.Logger = log
	pc.DrainWindow = min(pc.DrainWindow, 5*time.Second) // a dev server stops quickly
	eng := memengine.New(memengine.Config{})
	var psk, bsk, fsk sink
	psk.hooks(&pc, analytics.DefaultDeviceSample)
	p, err := proxy.New(pc, eng)
	if err != nil {
		return err
	}
	bc, err := broadcaster.New(broadcaster.Config{Token: *token, PublicReads: true, Logger: log, OnAudit: bsk.audit, OnNote: bsk.note}, eng)
	if err != nil {
		return err
	}
	kafka := ""
	if *kafkaAddr != "off" {
		kc, addr, err := devKafka(*kafkaAddr)
		if err != nil {
			return err
		}
		defer kc.Close()
		kafka = addr
		ko := &kafkaOpts{brokers: addr} // the rest: analytics.DefaultConfig
		pp, err := ko.producer("proxy/dev", p.Registry(), log)
		if err != nil {
			return err
		}
		bp, err := ko.producer("broadcaster/dev", bc.Registry(), log)
		if err != nil {
			return err
		}
		psk.set(pp, "proxy/dev")
		bsk.set(bp, "broadcaster/dev")
		defer psk.close()
		defer bsk.close()
	}
	defer bc.Close()
	var pcounter atomic.Pointer[analytics.PrefetchCounter]
	pf, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Logger: log,
		OnLookup: func(event, result string) { pcounter.Load().Lookup(event, result) }},
		Shed:     prefetch.ShedConfig{OnShed: func(priority, reason string) { pcounter.Load().Shed(priority, reason) }},
		Identity: ident, OnPull: fsk.pulled}, eng)
	if err != nil {
		return err
	}
	if kafka != "" {
		fp, err := (&kafkaOpts{brokers: kafka}).producer("prefetch/dev", pf.Registry(), log)
		if err != nil {
			return err
		}
		pcounter.Store(analytics.NewPrefetchCounter(fp, "dev", nil))
		go pcounter.Load().Run(ctx)
		fsk.set(fp, "prefetch/dev")
		defer fsk.close()
	}
	go pf.PublishLoad(ctx, eng, "prefetch-dev", time.Second)
	// The demo home screen (/demo/, on the prefetch address) is a page of another
	// origin than the proxy's: it is allowed to connect.
	demoMux := http.NewServeMux()
	demoMux.Handle("/", pf.Handler())
	var demoCfg demo.Config
	demoMux.Handle("/demo/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { demo.Handler(demoCfg).ServeHTTP(w, r) }))
	bound, err := serve.Listen(append(append([]serve.Server{}, []serve.Server{
		{Name: "proxy", Addr: *proxyAddr, Handler: p.Handler(), Upgrades: true},
		{Name: "broadcaster", Addr: *bcAddr, Handler: bc.Handler()},
		{Name: "prefetch", Addr: *pfAddr, Handler: demoMux},
	}...), debugServer(*debugAddr)...))
	if err != nil {
		return err
	}
	demoCfg = demo.Config{Proxy: "ws://" + bound[0].Listener.Addr().String() + "/v1/ws", GraphQL: "/graphql"}
	printDevBanner(bound[0].Listener.Addr().String(), bound[1].Listener.Addr().String(), bound[2].Listener.Addr().String(), *token, dk)
	if kafka != "" {
		fmt.Printf("Analytics stream (Kafka protocol, in process, docs/analytics.md): %s\n  go run ./cmd/stagecast analytics tail --kafka-brokers %s\n\n", kafka, kafka)
	}
	return serve.Run(ctx, log, bound, pc.DrainWindow+5*time.Second, drainProxy(p))
}

func printDevBanner(proxyAddr, bcAddr, pfAddr, token string, dk deviceKeyFlags) {
	defer printTokenHelp(proxyAddr, dk)
	fmt.Printf(`
stagecast dev server: in-memory engine, nothing persists.

  devices (WebSocket)   ws://%[1]s/v1/ws
  producers (HTTP)      http://%[2]s
  prefetch (GraphQL)    http://%[4]s/graphql   (plain JSON: http://%[4]s/v1/prefetch/EVENT)
  producer token        %[3]s
  producer console      http://%[2]s/console   (paste the token)
  demo home screen      http://%[4]s/demo/     (the TypeScript SDK in a page: open it beside the console)
  metrics / health      http://%[1]s/metrics  http://%[2]s/metrics  http://%[4]s/metrics  /healthz  /readyz

In each terminal you use:
  export STAGECAST_PRODUCER_TOKEN=%[3]s

Store a stage map, then prefetch it as a device would:
  go run ./cmd/stagecast stage --broadcaster http://%[2]s map put fight-2026-11-15 docs/examples/fight-map.json
  go run ./cmd/stagecast prefetch-get --graphql http://%[4]s/graphql fight-2026-11-15

Watch an event as a device (in another terminal; it prefetches the map first):
  go run ./cmd/stagecast watch --proxy ws://%[1]s/v1/ws --graphql http://%[4]s/graphql fight-2026-11-15

Trigger a stage:
  go run ./cmd/stagecast stage --broadcaster http://%[2]s set fight-2026-11-15 round-3
  curl -H "Authorization: Bearer %[3]s" -H 'Content-Type: application/json' \
       -d '{"stage":"round-3"}' http://%[2]s/v1/events/fight-2026-11-15/stage

Delivery report:
  go run ./cmd/stagecast stage --broadcaster http://%[2]s report fight-2026-11-15

Notify a device (watch with --device d7 to see it), then its delivery:
  go run ./cmd/stagecast notify --broadcaster http://%[2]s send --device d7 --type profile-updated --priority high --payload '{"name":"Ana"}'
  go run ./cmd/stagecast notify --broadcaster http://%[2]s report <id>

`, proxyAddr, bcAddr, token, pfAddr)
}

func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	addr := fs.String("addr", "0.0.0.0:8080", "devices' WebSocket address (also /metrics, /healthz, /readyz)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	debugAddr := debugFlag(fs)
	var pc proxy.Config
	proxyFlags(fs, &pc)
	ppFrom := proxyProtocolFlag(fs)
	ko := kafkaFlags(fs)
	var dk deviceKeyFlags
	dk.register(fs)
	var rc redisengine.Config
	redisAddrs := redisFlags(fs, &rc)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, eng, err := redisSetup(*logLevel, redisAddrs, rc)
	if err != nil {
		return err
	}
	defer eng.Close()
	kctx, stopKeys := context.WithCancel(context.Background())
	defer stopKeys()
	if err := dk.apply(kctx, log, &pc, nil); err != nil {
		return err
	}
	pc.Logger = log
	var sk sink
	sk.hooks(&pc, ko.deviceSample)
	p, err := proxy.New(pc, eng)
	if err != nil {
		return err
	}
	prod, err := ko.producer("proxy/"+p.ID(), p.Registry(), log)
	if err != nil {
		return err
	}
	sk.set(prod, "proxy/"+p.ID())
	defer sk.close()
	return serveUntilSignal(log, serve.Server{Name: "proxy", Addr: *addr, Handler: p.Handler(), Upgrades: true, ProxyProtocolFrom: *ppFrom},
		*debugAddr, pc.DrainWindow+10*time.Second, drainProxy(p))
}

func runBroadcaster(args []string) error {
	fs := flag.NewFlagSet("broadcaster", flag.ContinueOnError)
	addr := fs.String("addr", "0.0.0.0:8081", "producers' HTTP address (also /metrics, /healthz, /readyz)")
	debugAddr := debugFlag(fs)
	token := fs.String("producer-token", "", "producer bearer token, named \"default\" in the audit log (16+ characters, 64+ bits of entropy; placeholders refused)")
	tokenFile := fs.String("producer-token-file", "", "read the producer token from this file (keeps it out of ps and the environment)")
	tokensFile := fs.String("producer-tokens", "", `named producer tokens, a JSON file {"producers":[{"name":..,"token":..,"events":["fight-*"]}]}; re-read when it changes (rotation)`)
	publicReads := fs.Bool("public-reads", true, "serve GET /v1/events/{event} without a token")
	bd := broadcaster.DefaultConfig() // the defaults, typed once
	maxMap := fs.Int64("max-map-bytes", bd.MaxMapBytes, "largest stage map accepted (413 above)")
	producerRate := fs.Float64("producer-rate", bd.ProducerRate, "requests per second each producer token may send (429 above; burst twice that); negative: no limit")
	lowYield := fs.Duration("low-yield-window", bd.LowYield.Window, fmt.Sprintf("after a high or critical note is queued, the low lane gives way this long (groups of %d, pausing %gx each call); negative: never", bd.LowYield.Group, bd.LowYield.Pause))
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	ko := kafkaFlags(fs)
	var rc redisengine.Config
	redisAddrs := redisFlags(fs, &rc)
	if err := parse(fs, args); err != nil {
		return err
	}
	bcfg := broadcaster.Config{Token: *token, PublicReads: *publicReads, MaxMapBytes: *maxMap,
		ProducerRate: *producerRate, ProducerBurst: int(2 * max(*producerRate, 1)), LowYield: broadcaster.LowYield{Window: *lowYield}}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("--producer-token-file: %w", err)
		}
		bcfg.Token = strings.TrimSpace(string(b))
	}
	if *tokensFile != "" {
		ps, err := broadcaster.LoadProducers(*tokensFile)
		if err != nil {
			return err
		}
		bcfg.Producers = ps
	}
	if bcfg.Token == "" && len(bcfg.Producers) == 0 {
		return errors.New("a producer token is required: --producer-token, --producer-token-file or --producer-tokens (or STAGECAST_PRODUCER_TOKEN)")
	}
	log, eng, err := redisSetup(*logLevel, redisAddrs, rc)
	if err != nil {
		return err
	}
	defer eng.Close()
	bcfg.Logger = log
	var sk sink
	bcfg.OnAudit, bcfg.OnNote = sk.audit, sk.note
	bc, err := broadcaster.New(bcfg, eng)
	if err != nil {
		return err
	}
	defer bc.Close()
	host, _ := os.Hostname()
	source := fmt.Sprintf("broadcaster/%s-%d", host, os.Getpid())
	prod, err := ko.producer(source, bc.Registry(), log)
	if err != nil {
		return err
	}
	sk.set(prod, source)
	defer sk.close()
	if *tokensFile != "" {
		wctx, stopWatch := context.WithCancel(context.Background())
		defer stopWatch()
		fixed := bcfg.Token
		filewatch.Watch(wctx, *tokensFile, 10*time.Second, log, func(b []byte) error {
			ps, err := broadcaster.ParseProducers(b)
			if err != nil {
				return err
			}
			if fixed != "" {
				ps = append(ps, broadcaster.Producer{Name: "default", Token: fixed})
			}
			return bc.SetProducers(ps)
		})
	}
	return serveUntilSignal(log, serve.Server{Name: "broadcaster", Addr: *addr, Handler: bc.Handler()}, *debugAddr, 10*time.Second, nil)
}

// redisSetup builds the logger and the Redis engine of a server subcommand.
func redisSetup(logLevel string, ro *redisOpts, rc redisengine.Config) (*slog.Logger, *redisengine.Engine, error) {
	log, err := newLogger(logLevel)
	if err != nil {
		return nil, nil, err
	}
	if err := ro.apply(&rc); err != nil {
		return nil, nil, err
	}
	rc.Logger = log
	eng, err := redisengine.New(rc)
	return log, eng, err
}

func runPrefetch(args []string) error {
	fs := flag.NewFlagSet("prefetch", flag.ContinueOnError)
	addr := fs.String("addr", "0.0.0.0:8082", "devices' prefetch address: /graphql, /v1/prefetch/{event}, /metrics")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	debugAddr := debugFlag(fs)
	ppFrom := proxyProtocolFlag(fs)
	ko := kafkaFlags(fs)
	var cfg graph.ServerConfig
	fs.IntVar(&cfg.Cache.CacheSize, "cache-size", 10000, "events in the local cache")
	fs.DurationVar(&cfg.Cache.FreshFor, "fresh-for", 2*time.Second, "local cache entry lifetime (jittered x U(0.5, 1.5))")
	fs.DurationVar(&cfg.Cache.MaxStale, "max-stale", time.Hour, "serve a stale map this long when Redis fails")
	fs.DurationVar(&cfg.Cache.DefaultTTL, "default-ttl", 300*time.Second, "device TTL when the stage map sets none")
	fs.Float64Var(&cfg.Cache.TTLJitter, "ttl-jitter", 0.5, "device TTL ~ T x U(1-j, 1+j)")
	fs.IntVar(&cfg.Shed.MaxInFlight, "max-in-flight", 2048, "requests in flight above which even critical prefetch is shed")
	fs.IntVar(&cfg.Shed.NormalInFlight, "normal-in-flight", 512, "requests in flight above which normal prefetch is shed")
	fs.DurationVar(&cfg.Shed.LatencyBudget, "latency-budget", 200*time.Millisecond, "shed normal prefetch while average latency is above this")
	introspection := fs.Bool("graphql-introspection", true, "answer GraphQL introspection (the standard query of GraphiQL, graphql-codegen, Apollo tooling); false refuses __schema and __type")
	var dk deviceKeyFlags
	dk.register(fs)
	fs.Func("trusted-networks", "comma-separated CIDRs whose requests may set X-Stagecast-Priority without a device token", func(v string) error {
		cfg.Identity.TrustedNetworks = nil
		for _, p := range splitAddrs(v) {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			cfg.Identity.TrustedNetworks = append(cfg.Identity.TrustedNetworks, pfx)
		}
		return nil
	})
	var rc redisengine.Config
	redisAddrs := redisFlags(fs, &rc)
	fs.BoolVar(&rc.ClientCache, "client-cache", true, "Redis client-side caching of stage maps (server-assisted invalidation)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg.GraphQL.NoIntrospection = !*introspection
	log, eng, err := redisSetup(*logLevel, redisAddrs, rc)
	if err != nil {
		return err
	}
	defer eng.Close()
	cfg.Cache.Logger = log
	kctx, stopKeys := context.WithCancel(context.Background())
	defer stopKeys()
	if err := dk.apply(kctx, log, nil, &cfg.Identity); err != nil {
		return err
	}
	var counter atomic.Pointer[analytics.PrefetchCounter] // set below, once the server's registry exists
	var sk sink
	cfg.OnPull = sk.pulled
	cfg.Cache.OnLookup = func(event, result string) { counter.Load().Lookup(event, result) }
	cfg.Shed.OnShed = func(priority, reason string) { counter.Load().Shed(priority, reason) }
	pf, err := graph.NewServer(cfg, eng)
	if err != nil {
		return err
	}
	h, _ := os.Hostname()
	id := fmt.Sprintf("prefetch-%s-%d", h, os.Getpid())
	prod, err := ko.producer("prefetch/"+id, pf.Registry(), log)
	if err != nil {
		return err
	}
	if prod != nil {
		counter.Store(analytics.NewPrefetchCounter(prod, id, nil))
		go counter.Load().Run(kctx)
		sk.set(prod, "prefetch/"+id)
		defer sk.close()
	}
	go pf.PublishLoad(kctx, eng, id, time.Second)
	return serveUntilSignal(log, serve.Server{Name: "prefetch", Addr: *addr, Handler: pf.Handler(), ProxyProtocolFrom: *ppFrom}, *debugAddr, 10*time.Second, nil)
}

// serveUntilSignal serves srv (and pprof on debugAddr, if set) until SIGINT or
// SIGTERM, then runs drain and shuts down within grace.
func serveUntilSignal(log *slog.Logger, srv serve.Server, debugAddr string, grace time.Duration, drain func(context.Context)) error {
	bound, err := serve.Listen(append([]serve.Server{srv}, debugServer(debugAddr)...))
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	return serve.Run(ctx, log, bound, grace, drain)
}

// printTokenHelp tells how device tokens are set up in the dev server.
func printTokenHelp(proxyAddr string, dk deviceKeyFlags) {
	if dk.file != "" {
		fmt.Printf("Device tokens: keys from %s, required: %v. Mint one and watch with it:\n"+
			"  go run ./cmd/stagecast token mint --key <dir>/device-signing.jwk --device d1 --ttl 1h\n"+
			"  go run ./cmd/stagecast watch --proxy ws://%s/v1/ws --device-token <token> fight-2026-11-15\n\n", dk.file, dk.require, proxyAddr)
		return
	}
	fmt.Print(`Device tokens are off (any device may connect). To require signed tokens:
  go run ./cmd/stagecast token keygen --out .keys
  STAGECAST_DEVICE_KEYS=.keys/device-keys.jwks STAGECAST_REQUIRE_DEVICE_TOKEN=true make run
  go run ./cmd/stagecast token mint --key .keys/device-signing.jwk --device d1 --ttl 1h

`)
}
