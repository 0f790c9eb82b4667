package proxy_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

type received struct {
	mu     sync.Mutex
	frames []wire.ProxyFrame
	at     []time.Time
}

func (r *received) get(key string) (wire.ProxyFrame, time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range r.frames {
		if f.Key == key {
			return f, r.at[i], true
		}
	}
	return wire.ProxyFrame{}, time.Time{}, false
}

func watchDevice(t *testing.T, url string) *received {
	r := &received{}
	d, err := device.New(device.Config{URLs: []string{url}, Device: "tv-1", Events: map[string]uint64{"fight": 0},
		OnStage: func(f wire.ProxyFrame, at time.Time) {
			r.mu.Lock()
			r.frames, r.at = append(r.frames, f), append(r.at, at)
			r.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// An armed stage fires from the proxy's clock at its time, with the version
// assigned at arming, although nothing fires it centrally (no broadcaster
// here); a cancel before the time wins.
func TestArmedStageFiresAtTheEdge(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{})
	r := watchDevice(t, url)
	subscribed(t, p, 1)
	ctx := context.Background()
	at := time.Now().Add(400 * time.Millisecond)
	armed, err := eng.Arm(ctx, engine.ArmRequest{ID: "s1", Event: "fight", Key: "knockout", AtMS: at.UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	cancelled, _ := eng.Arm(ctx, engine.ArmRequest{ID: "s2", Event: "fight", Key: "never", AtMS: at.Add(100 * time.Millisecond).UnixMilli()})
	if err := eng.CancelSchedule(ctx, "fight", "s2", cancelled.V); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the armed stage delivered", func() bool { _, _, ok := r.get("knockout"); return ok })
	f, got, _ := r.get("knockout")
	if f.V != armed.V || f.TS != at.UnixMilli() {
		t.Fatalf("frame %+v, want v%d ts %d", f, armed.V, at.UnixMilli())
	}
	if early := at.Truncate(time.Millisecond).Sub(got); early > 5*time.Millisecond {
		t.Fatalf("delivered %v before its time", early)
	}
	if rec, _ := eng.Recent(ctx, "fight", 5); len(rec) != 0 {
		t.Fatalf("the engine's log has %+v: this test has no central fire", rec)
	}
	if v := labeled(t, p, "stagecast_proxy_armed_stages_total", "outcome", "cancelled"); v != 1 {
		t.Fatalf("cancelled armed stages: %v", v)
	}
	// The central fire of the same schedule (same version) changes nothing.
	if fired, err := eng.FireSchedule(ctx, "fight", "s1"); err != nil || fired.V != armed.V {
		t.Fatalf("central fire: %+v %v", fired, err)
	}
	eventually(t, 2*time.Second, "past the cancelled one's time", func() bool { return time.Now().After(at.Add(300 * time.Millisecond)) })
	if _, _, ok := r.get("never"); ok {
		t.Fatal("a cancelled schedule was delivered")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.frames) != 1 {
		t.Fatalf("device applied %d stages, want 1 (the central fire is a duplicate)", len(r.frames))
	}
}

// A proxy whose clock is off the engine's by more than the budget does not
// fire locally; the central fire delivers the same version.
func TestArmedStageSkewFallsBackToCentralFire(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{Now: func() time.Time { return time.Now().Add(time.Second) }})
	r := watchDevice(t, url)
	subscribed(t, p, 1)
	ctx := context.Background()
	at := time.Now().Add(300 * time.Millisecond)
	armed, err := eng.Arm(ctx, engine.ArmRequest{ID: "s1", Event: "fight", Key: "knockout", AtMS: at.UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the arm refused for skew", func() bool {
		return labeled(t, p, "stagecast_proxy_armed_stages_total", "outcome", "not_armed_skew") == 1
	})
	eventually(t, 2*time.Second, "past the time", func() bool { return time.Now().After(at.Add(200 * time.Millisecond)) })
	if _, _, ok := r.get("knockout"); ok {
		t.Fatal("a proxy with a skewed clock fired locally")
	}
	if _, err := eng.FireSchedule(ctx, "fight", "s1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the central fire delivered", func() bool { _, _, ok := r.get("knockout"); return ok })
	if f, _, _ := r.get("knockout"); f.V != armed.V {
		t.Fatalf("central fire v%d, armed v%d", f.V, armed.V)
	}
}

// labeled reads one labelled series of a counter or gauge (0 when absent).
func labeled(t *testing.T, p *proxy.Server, name, label, value string) float64 {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

// A paced change reaches a proxy's devices in waves at PacedRate (here 100/s:
// 40 devices in 4 waves 100 ms apart, so first to last is 300 ms, checked as
// >= 250 ms: an unpaced change reaches all 40 within a few ms, and receive
// times carry scheduling noise either way), five times slower while the prefetch tier
// reports shedding critical work; an unpaced one goes to all at once.
func TestPacedBroadcast(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{PacedRate: 100, ReportInterval: 50 * time.Millisecond})
	const n = 40
	var rs []*received
	for range n {
		rs = append(rs, watchDevice(t, url))
	}
	subscribed(t, p, n)
	ctx := context.Background()
	span := func(key string) time.Duration {
		var first, last time.Time
		eventually(t, 20*time.Second, "all devices got "+key, func() bool {
			for _, r := range rs {
				if _, _, ok := r.get(key); !ok {
					return false
				}
			}
			return true
		})
		for _, r := range rs {
			_, at, _ := r.get(key)
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
		}
		return last.Sub(first)
	}
	if _, err := eng.SetStage(ctx, engine.SetRequest{Event: "fight", Key: "paced-1", TS: 1, Paced: true}); err != nil {
		t.Fatal(err)
	}
	if s := span("paced-1"); s < 250*time.Millisecond {
		t.Fatalf("a paced change to %d devices at 100/s spread over %v, want about 300ms (>= 250ms)", n, s)
	}
	// The prefetch tier sheds critical work: a fifth of the rate.
	if err := eng.PutProxyLoad(ctx, engine.ProxyLoad{ID: "pf-1", Tier: "prefetch", Shedding: 2, AtMS: time.Now().UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the proxy saw the prefetch tier's level", func() bool {
		return p.PrefetchLevel() == 2
	})
	if _, err := eng.SetStage(ctx, engine.SetRequest{Event: "fight", Key: "paced-2", TS: 2, Paced: true}); err != nil {
		t.Fatal(err)
	}
	if s := span("paced-2"); s < 1500*time.Millisecond {
		t.Fatalf("paced at a fifth of 100/s, %d devices spread over %v, want >= 1.5s", n, s)
	}
}
