package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// An armed stage on Redis with 3 proxies and 300 devices: every device gets it
// with the armed version, none before its time, once; the spread of receipt
// times across the proxies is logged beside an immediate change's (the figures
// in docs/benchmarks.md come from go test -v -run TestArmedStageAcrossProxies).
func TestArmedStageAcrossProxies(t *testing.T) {
	f := startFleet(t, 3, redistest.Options{}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := f.bc.PutStageMap(ctx, "armed", []byte(`{"stages":{"a":{"default":{}}}}`)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string][]time.Time{} // key -> receipt times
	vs := map[string]map[uint64]int{}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	const n = 300
	for i := 0; i < n; i++ {
		d, err := device.New(device.Config{URLs: []string{f.urls[i%3]}, Device: fmt.Sprintf("a%d", i), Events: map[string]uint64{"armed": 0},
			BackoffBase: 50 * time.Millisecond,
			OnStage: func(fr wire.ProxyFrame, at time.Time) {
				mu.Lock()
				got[fr.Key] = append(got[fr.Key], at)
				if vs[fr.Key] == nil {
					vs[fr.Key] = map[uint64]int{}
				}
				vs[fr.Key][fr.V]++
				mu.Unlock()
			}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(ctx) }()
	}
	eventually(t, 20*time.Second, "devices subscribed", func() bool {
		total := 0.0
		for _, p := range f.proxies {
			total += metricValue(t, p, "stagecast_proxy_subscriptions")
		}
		return total == n
	})
	spread := func(key string) (time.Duration, []time.Time) {
		mu.Lock()
		defer mu.Unlock()
		ts := slices.Clone(got[key])
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		return ts[len(ts)-1].Sub(ts[0]), ts
	}
	count := func(key string) int { mu.Lock(); defer mu.Unlock(); return len(got[key]) }

	start := time.Now()
	if _, err := f.bc.SetStage(ctx, "armed", "immediate", nil, "imm"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "immediate delivered", func() bool { return count("immediate") == n })
	immSpread, immTimes := spread("immediate")

	at := time.Now().Add(time.Second)
	sched, err := f.bc.Arm(ctx, "armed", broadcaster.ScheduleRequest{Stage: "armed-stage", At: at.UnixMilli()}, "arm-1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "armed delivered", func() bool { return count("armed-stage") == n })
	armSpread, armTimes := spread("armed-stage")
	mu.Lock()
	versions := vs["armed-stage"]
	mu.Unlock()
	if len(versions) != 1 || versions[sched.V] != n {
		t.Fatalf("armed versions %v, want %d devices on v%d", versions, n, sched.V)
	}
	if first := armTimes[0]; first.Before(at.Add(-5 * time.Millisecond)) {
		t.Fatalf("a device got the armed stage %v before its time", at.Sub(first))
	}
	t.Logf("300 devices on 3 proxies: immediate change spread %v (first %v after the POST); armed stage spread %v (first %v after its time, last %v)",
		immSpread.Round(10*time.Microsecond), immTimes[0].Sub(start).Round(10*time.Microsecond),
		armSpread.Round(10*time.Microsecond), armTimes[0].Sub(at).Round(10*time.Microsecond), armTimes[len(armTimes)-1].Sub(at).Round(10*time.Microsecond))
	eventually(t, 5*time.Second, "the central fire made the armed version current", func() bool {
		rec, err := f.bc.Get(ctx, "armed")
		return err == nil && rec.V == sched.V
	})
}
