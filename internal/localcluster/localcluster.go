// Package localcluster runs a whole stagecast fleet on one machine, each part a
// separate OS process of the real binaries: a Redis Cluster (3 masters, 3
// replicas), one broadcaster, three proxies, two prefetch servers. Like
// Kubernetes, it supervises them: a member that exits is logged and restarted
// with backoff while the rest keep serving. A control interface on loopback
// (control.json in the fleet's folder: address and token) lists the members and
// kills, drains, pauses, resumes or restarts one, or injects a game-day fault,
// so tools never guess pids. It stays in the foreground until its context ends,
// then stops everything (proxies drain first). `make cluster` runs it.
package localcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/netfault"
	"github.com/stagecast/stagecast/internal/redistest"
)

// Config says where everything listens. Zero ports take the documented defaults.
type Config struct {
	Stagecast       string // path to the stagecast binary
	Dir             string // logs and Redis data; default a new temp dir
	Token           string // producer token; required (STAGECAST_PRODUCER_TOKEN)
	RedisPorts      []int  // 6: masters then replicas; default 7001-7006
	BroadcasterPort int    // default 9100
	ProxyPorts      []int  // default 9101-9103
	PrefetchPorts   []int  // default 9111-9112
	Out             io.Writer
	// NoRestart turns the supervisor off: the first member that exits stops the
	// fleet (the old behaviour). Default: restart members, with backoff.
	NoRestart bool
	// ControlAddr is where the control interface listens (loopback only).
	// Default 127.0.0.1:0 (a free port, written to Dir/control.json).
	ControlAddr string
	// Ready, if set, is called once everything answers.
	Ready func(Info)
	// RequireDeviceToken makes a device-token key pair in Dir and runs the
	// proxies and prefetch servers with --device-keys and
	// --require-device-token, as production does; Info.DeviceKey is the
	// signing key (loadgen live --device-key, stagecast token mint).
	RequireDeviceToken bool
	// Links routes every link that matters through a relay the fleet embeds
	// (internal/netfault, toxiproxy), so network faults can break it: each
	// server's way to each Redis node (--redis-addr-map) and the devices' way
	// in to each proxy and prefetch server (Info.Proxies and Info.Prefetch
	// are then the relays' addresses). make cluster turns it on.
	Links bool
	// RedisWaitReplicas is the broadcaster's --redis-wait-replicas (0: off).
	RedisWaitReplicas int
}

// Info is what is running.
type Info struct {
	Dir         string
	DeviceKey   string // the device-token signing key, with RequireDeviceToken
	Redis       []string
	Broadcaster string   // http://...
	Proxies     []string // ws://.../v1/ws (through the devices' links, with Links)
	Prefetch    []string // http://.../graphql (likewise)
	Control     ControlInfo
	// Links: how many network links the fleet routes through its relays.
	Links int
}

// DefaultConfig returns the local fleet's defaults (make cluster's ports);
// Start fills each zero field of its Config from it (package defaults).
func DefaultConfig() Config {
	return Config{RedisPorts: []int{7001, 7002, 7003, 7004, 7005, 7006}, BroadcasterPort: 9100,
		ProxyPorts: []int{9101, 9102, 9103}, PrefetchPorts: []int{9111, 9112}, Out: io.Discard, ControlAddr: "127.0.0.1:0"}
}

func (c *Config) defaults() error {
	if c.Token == "" {
		return errors.New("localcluster: set STAGECAST_PRODUCER_TOKEN (at least 16 characters)")
	}
	defaults.Fill(c, DefaultConfig())
	if len(c.RedisPorts) != 6 {
		return errors.New("localcluster: need 6 Redis ports (3 masters, 3 replicas)")
	}
	if c.Dir == "" {
		d, err := os.MkdirTemp("", "stagecast-cluster-")
		if err != nil {
			return err
		}
		c.Dir = d
	}
	return nil
}

// Run starts the fleet, waits for ctx to end, and stops it.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.defaults(); err != nil {
		return err
	}
	info := Info{Dir: cfg.Dir}
	for _, port := range cfg.RedisPorts {
		info.Redis = append(info.Redis, "127.0.0.1:"+strconv.Itoa(port))
	}
	var members []*member
	exited := make(chan string, 32)
	sctx, stopSupervisors := context.WithCancel(ctx)
	var links *netfault.Links
	if cfg.Links {
		links = netfault.New()
	}
	announced := map[string]string{} // a Redis node's real address -> the one it announces (with links)
	// pending are the links made for the member start makes next.
	var pending []memberLink
	start := func(name, kind, addr string, env []string, argv ...string) error {
		m := &member{name: name, kind: kind, addr: addr, argv: argv, env: env, dir: cfg.Dir, links: pending}
		pending = nil
		if err := m.start(); err != nil {
			return err
		}
		members = append(members, m)
		go m.supervise(sctx, !cfg.NoRestart, cfg.Out, exited)
		return nil
	}
	defer func() {
		// Stop in reverse order: servers (proxies drain) before Redis.
		for i := len(members) - 1; i >= 0; i-- {
			members[i].stop(15 * time.Second)
		}
		stopSupervisors()
		if links != nil {
			links.Close()
		}
		fmt.Fprintf(cfg.Out, "stopped everything; logs are in %s\n", cfg.Dir)
	}()
	// redisVia makes name's links to every Redis node and returns the
	// --redis-addr-map argument that routes its connections through them.
	redisVia := func(name string) ([]string, error) {
		if links == nil {
			return nil, nil
		}
		var pairs []string
		for _, a := range info.Redis {
			_, port, _ := strings.Cut(a, ":")
			l, err := links.Add(name+"->redis-"+port, a)
			if err != nil {
				return nil, err
			}
			pending = append(pending, memberLink{link: l, kind: "redis", peer: a})
			// The seed by its own address, the node as Redis names it.
			pairs = append(pairs, a+"="+l.Listen, announced[a]+"="+l.Listen)
		}
		return []string{"--redis-addr-map", strings.Join(pairs, ",")}, nil
	}
	// devicesVia makes the devices' link to name at addr and returns the
	// address devices dial.
	devicesVia := func(name, addr string) (string, error) {
		if links == nil {
			return addr, nil
		}
		l, err := links.Add("devices->"+name, addr)
		if err != nil {
			return "", err
		}
		pending = append(pending, memberLink{link: l, kind: "devices", peer: addr})
		return l.Listen, nil
	}

	// With links, each node announces relays in front of its client and bus
	// ports: its replicas and the other nodes reach it only through them (so
	// a fault can cut a master from its replica), and CLUSTER SLOTS names them.
	for _, port := range cfg.RedisPorts {
		dir := filepath.Join(cfg.Dir, "redis-"+strconv.Itoa(port))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		argv := []string{"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", dir, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
			"--appendonly", "yes", "--save", "", "--protected-mode", "no"}
		if links != nil {
			in, err := links.Add("peers->redis-"+strconv.Itoa(port), addr)
			if err != nil {
				return err
			}
			bus, err := links.Add("peers->redis-"+strconv.Itoa(port)+"-bus", "127.0.0.1:"+strconv.Itoa(port+10000))
			if err != nil {
				return err
			}
			pending = append(pending, memberLink{link: in, kind: "peers", peer: addr}, memberLink{link: bus, kind: "peers", peer: addr})
			_, inPort, _ := strings.Cut(in.Listen, ":")
			_, busPort, _ := strings.Cut(bus.Listen, ":")
			argv = append(argv, "--cluster-announce-ip", "127.0.0.1", "--cluster-announce-port", inPort, "--cluster-announce-bus-port", busPort)
			announced[addr] = in.Listen
		}
		if err := start("redis-"+strconv.Itoa(port), "redis", addr, nil, argv...); err != nil {
			return err
		}
	}
	for _, a := range info.Redis {
		if err := waitFor(ctx, 15*time.Second, func() bool { return redistest.Ping(a) == nil }); err != nil {
			return fmt.Errorf("redis %s did not start (see %s): %w", a, cfg.Dir, err)
		}
	}
	create := []string{"--cluster", "create"}
	for _, a := range info.Redis {
		create = append(create, cmp.Or(announced[a], a))
	}
	create = append(create, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", create...).CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := waitFor(ctx, 30*time.Second, func() bool { return clusterOK(info.Redis) }); err != nil {
		return fmt.Errorf("redis cluster not ok: %w", err)
	}
	// Ready means replicated: every master has its replica online (a full
	// sync first), so --redis-wait-replicas works from the first change.
	if err := waitFor(ctx, 30*time.Second, func() bool { return replicasOnline(info.Redis) }); err != nil {
		return fmt.Errorf("redis replicas not in sync: %w", err)
	}
	env := []string{"STAGECAST_REDIS=" + strings.Join(info.Redis[:3], ","), "STAGECAST_PRODUCER_TOKEN=" + cfg.Token}
	edgeEnv := env // proxies and prefetch servers
	if cfg.RequireDeviceToken {
		keys, jwks, err := deviceKeys(cfg.Dir)
		if err != nil {
			return err
		}
		info.DeviceKey = keys
		edgeEnv = append(append([]string(nil), env...), "STAGECAST_DEVICE_KEYS="+jwks, "STAGECAST_REQUIRE_DEVICE_TOKEN=true")
	}
	bc := "127.0.0.1:" + strconv.Itoa(cfg.BroadcasterPort)
	via, err := redisVia("broadcaster")
	if err != nil {
		return err
	}
	if cfg.RedisWaitReplicas > 0 {
		via = append(via, "--redis-wait-replicas", strconv.Itoa(cfg.RedisWaitReplicas))
	}
	if err := start("broadcaster", "broadcaster", bc, env, append([]string{cfg.Stagecast, "broadcaster", "--addr", bc}, via...)...); err != nil {
		return err
	}
	info.Broadcaster = "http://" + bc
	ready := []string{info.Broadcaster + "/readyz"}
	for i, port := range cfg.ProxyPorts {
		name, addr := fmt.Sprintf("proxy-%d", i+1), "127.0.0.1:"+strconv.Itoa(port)
		via, err := redisVia(name)
		if err != nil {
			return err
		}
		front, err := devicesVia(name, addr)
		if err != nil {
			return err
		}
		// A local fleet's devices (watch, loadgen) all come from loopback.
		// Directed drains send devices to the others' way in.
		argv := append([]string{cfg.Stagecast, "proxy", "--addr", addr, "--proxy-id", name, "--drain-window", "3s",
			"--public-url", "ws://" + front + "/v1/ws", "--ip-limit-exempt", "127.0.0.0/8"}, via...)
		if err := start(name, "proxy", addr, edgeEnv, argv...); err != nil {
			return err
		}
		info.Proxies = append(info.Proxies, "ws://"+front+"/v1/ws")
		ready = append(ready, "http://"+addr+"/readyz")
	}
	for i, port := range cfg.PrefetchPorts {
		name, addr := fmt.Sprintf("prefetch-%d", i+1), "127.0.0.1:"+strconv.Itoa(port)
		via, err := redisVia(name)
		if err != nil {
			return err
		}
		front, err := devicesVia(name, addr)
		if err != nil {
			return err
		}
		if err := start(name, "prefetch", addr, edgeEnv, append([]string{cfg.Stagecast, "prefetch", "--addr", addr}, via...)...); err != nil {
			return err
		}
		info.Prefetch = append(info.Prefetch, "http://"+front+"/graphql")
		ready = append(ready, "http://"+addr+"/readyz")
	}
	if links != nil {
		info.Links = len(links.All())
	}
	for _, u := range ready {
		if err := waitFor(ctx, 20*time.Second, func() bool { return httpOK(u) }); err != nil {
			return fmt.Errorf("%s not ready (logs in %s): %w", u, cfg.Dir, err)
		}
	}
	ci, err := serveControl(sctx, cfg.ControlAddr, cfg.Dir, members, cfg.Out)
	if err != nil {
		return err
	}
	info.Control = ci
	printInfo(cfg.Out, info)
	if cfg.Ready != nil {
		cfg.Ready(info)
	}
	select {
	case <-ctx.Done():
		return nil
	case name := <-exited: // only with NoRestart
		return fmt.Errorf("%s exited unexpectedly; see %s", name, filepath.Join(cfg.Dir, name+".log"))
	}
}

// deviceKeys writes a new device-token key pair into dir: the signing key
// and the key set the edge servers verify with.
func deviceKeys(dir string) (signing, jwks string, err error) {
	priv, pub, err := devicetoken.Keygen("localcluster")
	if err != nil {
		return "", "", err
	}
	set, err := devicetoken.AddToKeySet(nil, pub)
	if err != nil {
		return "", "", err
	}
	pb, err := priv.MarshalJSON()
	if err != nil {
		return "", "", err
	}
	signing, jwks = filepath.Join(dir, "device-signing.jwk"), filepath.Join(dir, "device-keys.jwks")
	if err := os.WriteFile(signing, append(pb, '\n'), 0o600); err != nil {
		return "", "", err
	}
	return signing, jwks, os.WriteFile(jwks, append(set, '\n'), 0o644)
}

func printInfo(w io.Writer, i Info) {
	if i.DeviceKey != "" {
		fmt.Fprintf(w, "\nDevice tokens are required; mint them with the key %s\n  (loadgen live --device-key %s; stagecast token mint --key %s ...)\n", i.DeviceKey, i.DeviceKey, i.DeviceKey)
	}
	fmt.Fprintf(w, `
stagecast local cluster is up (Ctrl-C stops everything).

  Redis Cluster   %s (masters), %s (replicas)
  broadcaster     %s
  proxies         %s
  prefetch        %s
  logs            %s
  control         http://%s  (token in %s)

A member that exits is restarted. Inject a fault, as a game day would:
  go run ./cmd/stagecast fleet --control %s list
  go run ./cmd/stagecast fleet --control %s kill proxy-2
  go run ./cmd/stagecast fleet --control %s fault redis-master-kill

Try:
  go run ./cmd/stagecast watch --proxy %s fight-2026-11-15
  go run ./cmd/stagecast stage --broadcaster %s set fight-2026-11-15 round-3

`, strings.Join(i.Redis[:3], " "), strings.Join(i.Redis[3:], " "), i.Broadcaster, strings.Join(i.Proxies, " "),
		strings.Join(i.Prefetch, " "), i.Dir, i.Control.Addr, filepath.Join(i.Dir, ControlFile),
		filepath.Join(i.Dir, ControlFile), filepath.Join(i.Dir, ControlFile), filepath.Join(i.Dir, ControlFile),
		strings.Join(i.Proxies, ","), i.Broadcaster)
}

func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func clusterOK(addrs []string) bool {
	for _, a := range addrs {
		_, port, _ := strings.Cut(a, ":")
		out, err := exec.Command("redis-cli", "-p", port, "CLUSTER", "INFO").Output()
		if err != nil || !strings.Contains(string(out), "cluster_state:ok") {
			return false
		}
	}
	return true
}

// replicasOnline: every master among addrs has a replica in state online.
func replicasOnline(addrs []string) bool {
	masters := 0
	for _, a := range addrs {
		_, port, _ := strings.Cut(a, ":")
		out, err := exec.Command("redis-cli", "-p", port, "INFO", "replication").Output()
		if err != nil {
			return false
		}
		if !strings.Contains(string(out), "role:master") {
			continue
		}
		masters++
		if !strings.Contains(string(out), "state=online") {
			return false
		}
	}
	return masters > 0
}

func httpOK(u string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// FreePorts fills every port of cfg that is zero with a free loopback port
// (Redis ports with a free cluster-bus port, +10000), for fleets started by
// tools and tests beside other things.
func FreePorts(cfg *Config) error {
	taken := map[int]bool{}
	free := func(bus bool) (int, error) {
		for i := 0; i < 500; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, err
			}
			p := l.Addr().(*net.TCPAddr).Port
			l.Close()
			if taken[p] || (bus && (p+10000 > 65535 || taken[p+10000])) {
				continue
			}
			if bus {
				bl, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
				if err != nil {
					continue
				}
				bl.Close()
				taken[p+10000] = true
			}
			taken[p] = true
			return p, nil
		}
		return 0, errors.New("localcluster: no free port")
	}
	var err error
	if len(cfg.RedisPorts) == 0 {
		for i := 0; i < 6 && err == nil; i++ {
			var p int
			p, err = free(true)
			cfg.RedisPorts = append(cfg.RedisPorts, p)
		}
	}
	if cfg.BroadcasterPort == 0 && err == nil {
		cfg.BroadcasterPort, err = free(false)
	}
	for len(cfg.ProxyPorts) < 3 && err == nil {
		var p int
		p, err = free(false)
		cfg.ProxyPorts = append(cfg.ProxyPorts, p)
	}
	for len(cfg.PrefetchPorts) < 2 && err == nil {
		var p int
		p, err = free(false)
		cfg.PrefetchPorts = append(cfg.PrefetchPorts, p)
	}
	return err
}
