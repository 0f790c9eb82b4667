package localcluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/localcluster"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/loadgen"
)

// redisPort returns a free port whose cluster-bus port (+10000) is free too.
func redisPort(t *testing.T, taken map[int]bool) int {
	for i := 0; i < 200; i++ {
		p, err := redistest.FreePort()
		if err != nil || p+10000 > 65535 || taken[p] || taken[p+10000] {
			continue
		}
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000)); err == nil {
			l.Close()
			taken[p], taken[p+10000] = true, true
			return p
		}
	}
	t.Fatal("no free Redis port pair")
	return 0
}

func freePort(t *testing.T, taken map[int]bool) int {
	for {
		p, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if !taken[p] {
			taken[p] = true
			return p
		}
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildStagecast builds the stagecast binary once for the package's tests.
func buildStagecast(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "stagecast-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "stagecast")
		if out, err := exec.Command("go", "build", "-o", builtBin, "github.com/stagecast/stagecast/cmd/stagecast").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// TestLocalCluster runs the make-cluster fleet (real binaries, separate
// processes) on free ports: a device on each proxy receives a stage set through
// the broadcaster, both prefetch servers serve the stage map, and stopping it
// stops everything.
// startCluster runs a local fleet on free ports (edit changes its Config)
// until stop is called or the test ends, and returns what runs; stop returns
// Run's error (or a timeout's after 60 s).
func startCluster(t *testing.T, edit func(*localcluster.Config)) (cfg localcluster.Config, info localcluster.Info, stop func() error) {
	t.Helper()
	bin := buildStagecast(t)
	taken := map[int]bool{}
	cfg = localcluster.Config{Stagecast: bin, Dir: t.TempDir(), Token: "local-cluster-token-0123456789"}
	for i := 0; i < 6; i++ {
		cfg.RedisPorts = append(cfg.RedisPorts, redisPort(t, taken))
	}
	cfg.BroadcasterPort = freePort(t, taken)
	cfg.ProxyPorts = []int{freePort(t, taken), freePort(t, taken), freePort(t, taken)}
	cfg.PrefetchPorts = []int{freePort(t, taken), freePort(t, taken)}
	if edit != nil {
		edit(&cfg)
	}
	ready := make(chan localcluster.Info, 1)
	cfg.Ready = func(i localcluster.Info) { ready <- i }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- localcluster.Run(ctx, cfg) }()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(60 * time.Second):
				stopErr = errors.New("cluster did not stop within 60s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case info = <-ready:
		return cfg, info, stop
	case err := <-done:
		logTails(t, cfg.Dir)
		t.Fatalf("cluster did not start: %v", err)
	case <-time.After(90 * time.Second):
		logTails(t, cfg.Dir)
		t.Fatal("cluster not ready within 90s")
	}
	return cfg, info, stop
}

// logTails logs the last lines of each member's log in dir: the test's
// temporary directory is gone once it fails, and with it what a member said.
func logTails(t *testing.T, dir string) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		t.Logf("%s, last lines:\n%s", filepath.Base(l), lastLines(string(b), 15))
	}
}

// lastLines is the last n lines of s (this file has no build tag, so the
// race-free fault tests use it too).
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func TestLocalCluster(t *testing.T) {
	cfg, info, stop := startCluster(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	bc := &producer.Client{BaseURL: info.Broadcaster, Token: cfg.Token}
	if _, err := bc.PutStageMap(ctx, "fight", []byte(`{"stages":{"round-3":{"default":{"rows":[1]}}}}`)); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var devs []*device.Client
	for _, u := range info.Proxies {
		d, err := device.New(device.Config{URLs: []string{u}, Events: map[string]uint64{"fight": 0}})
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(dctx) }()
	}
	waitfor.True(t, 20*time.Second, "a device on each proxy", func() bool {
		for _, d := range devs {
			if !d.Connected() {
				return false
			}
		}
		return true
	})
	r, err := bc.SetStage(ctx, "fight", "round-3", nil, "lc-1")
	if err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 20*time.Second, "every proxy's device on round-3", func() bool {
		for _, d := range devs {
			if key, v := d.State("fight"); key != "round-3" || v != r.V {
				return false
			}
		}
		return true
	})
	for _, u := range info.Prefetch {
		p, err := device.NewPrefetcher(device.PrefetchConfig{URL: u, Event: "fight"})
		if err != nil {
			t.Fatal(err)
		}
		waitfor.True(t, 10*time.Second, "stage map from "+u, func() bool {
			_, err := p.Fetch(ctx)
			_, ok := p.Lookup("round-3")
			return err == nil && ok
		})
	}

	// The supervisor: a proxy killed (a crash) and another drained (SIGTERM)
	// come back; the rest of the fleet keeps serving meanwhile.
	fleet, err := loadgen.OpenFleetControl(filepath.Join(cfg.Dir, localcluster.ControlFile))
	if err != nil {
		t.Fatal(err)
	}
	member := func(name string) loadgen.FleetMember {
		ms, err := fleet.Members(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Name == name {
				return m
			}
		}
		t.Fatalf("no member %s in %+v", name, ms)
		return loadgen.FleetMember{}
	}
	if _, err := fleet.Act(ctx, "proxy-2", "kill", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fleet.Act(ctx, "proxy-3", "drain", 0); err != nil {
		t.Fatal(err)
	}
	r2, err := bc.SetStage(ctx, "fight", "round-4", nil, "lc-2") // while two proxies are down
	if err != nil {
		t.Fatalf("the broadcaster stopped serving when proxies died: %v", err)
	}
	for _, name := range []string{"proxy-2", "proxy-3"} {
		waitfor.True(t, 30*time.Second, name+" restarted", func() bool {
			m := member(name)
			return m.State == "running" && m.Restarts == 1
		})
	}
	waitfor.True(t, 30*time.Second, "every device back on the latest stage", func() bool {
		for _, d := range devs {
			if key, v := d.State("fight"); key != "round-4" || v != r2.V {
				return false
			}
		}
		return true
	})
	// A Redis master paused (a slow shard) resumes by itself; nothing restarts.
	res, err := fleet.Inject(ctx, "redis-pause", "0", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, res.Member+" resumed", func() bool { return member(res.Member).State == "running" })
	if m := member(res.Member); m.Restarts != 0 {
		t.Fatalf("a paused member was restarted: %+v", m)
	}
	if _, err := fleet.Inject(ctx, "proxy-explode", "", 0); err == nil {
		t.Fatal("an unknown fault was accepted")
	}
	bad := *fleet
	bad.Token = "wrong"
	if _, err := bad.Members(ctx); err == nil {
		t.Fatal("the control interface answered a wrong token")
	}

	dcancel()
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, a := range info.Redis {
		if redistest.Ping(a) == nil {
			t.Fatalf("redis %s still running after stop", a)
		}
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(cfg.ProxyPorts[0]), time.Second); err == nil {
		t.Fatal("a proxy still listens after stop")
	}
}

// TestLocalClusterRequiresTokens (issue 23, item 5): a fleet started with
// RequireDeviceToken (make cluster CLUSTER_FLAGS=--require-device-token)
// refuses a device without a token, and a loadgen run that mints one per
// device from the fleet's key (loadgen live --device-key) ends with every
// device on every stage.
func TestLocalClusterRequiresTokens(t *testing.T) {
	cfg, info, _ := startCluster(t, func(c *localcluster.Config) { c.RequireDeviceToken = true })
	if info.DeviceKey == "" {
		t.Fatal("no device key in the fleet's info")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	anon, err := device.New(device.Config{URLs: info.Proxies[:1], Device: "anon", Events: map[string]uint64{"fight": 0}})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	err = anon.Run(actx)
	timedOut := actx.Err() != nil
	acancel()
	if err == nil || timedOut {
		t.Fatalf("a device without a token: %v (want refused at once, not kept retrying)", err)
	}
	signer, err := devicetoken.LoadSigner(info.DeviceKey)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := loadgen.ParseScenario([]byte(`
name: tokens
event: lc-tokens
duration: 30m
devices: 90
connect: {start: 0s, ramp: 5m}
stages:
  - {at: 10m, stage: kickoff}
  - {at: 20m, stage: final}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := loadgen.LiveReport(ctx, sc, loadgen.LiveConfig{ProxyURLs: info.Proxies, GraphQLURL: info.Prefetch[0], Broadcaster: info.Broadcaster,
		Token: cfg.Token, TimeScale: 360, Settle: 3 * time.Second,
		Tokens: func(id loadgen.DeviceIdentity) (string, error) {
			return signer.Mint(devicetoken.Claims{Device: id.Device, Member: id.Member, Platform: id.Platform, Segment: id.Segment}, time.Hour)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Connected != 90 || r.Errors != 0 || r.Prefetch.Errors != 0 {
		t.Fatalf("connected %d errors %d prefetch %+v", r.Connected, r.Errors, r.Prefetch)
	}
	for _, b := range r.Broadcasts {
		if b.Missed != 0 {
			t.Fatalf("broadcast %+v missed", b)
		}
	}
}
