package localcluster_test

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/localcluster"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
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

// TestLocalCluster runs the make-cluster fleet (real binaries, separate
// processes) on free ports: a device on each proxy receives a stage set through
// the broadcaster, both prefetch servers serve the stage map, and stopping it
// stops everything.
func TestLocalCluster(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stagecast")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/stagecast/stagecast/cmd/stagecast").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	taken := map[int]bool{}
	cfg := localcluster.Config{Stagecast: bin, Dir: t.TempDir(), Token: "local-cluster-token-0123456789"}
	for i := 0; i < 6; i++ {
		cfg.RedisPorts = append(cfg.RedisPorts, redisPort(t, taken))
	}
	cfg.BroadcasterPort = freePort(t, taken)
	cfg.ProxyPorts = []int{freePort(t, taken), freePort(t, taken), freePort(t, taken)}
	cfg.PrefetchPorts = []int{freePort(t, taken), freePort(t, taken)}
	ready := make(chan localcluster.Info, 1)
	cfg.Ready = func(i localcluster.Info) { ready <- i }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- localcluster.Run(ctx, cfg) }()
	var info localcluster.Info
	select {
	case info = <-ready:
	case err := <-done:
		t.Fatalf("cluster did not start: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("cluster not ready within 90s")
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
	time.Sleep(200 * time.Millisecond) // let the subs land (nothing to catch up yet, no frame to wait for)
	bc := &broadcaster.Client{BaseURL: info.Broadcaster, Token: cfg.Token}
	if _, err := bc.PutStageMap(ctx, "fight", []byte(`{"stages":{"round-3":{"default":{"rows":[1]}}}}`)); err != nil {
		t.Fatal(err)
	}
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
	dcancel()
	wg.Wait()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("cluster did not stop within 60s")
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
