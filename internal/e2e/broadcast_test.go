package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// TestEveryDeviceEveryStage: 1 broadcaster, 3 proxies, 1 Redis, 2,000 devices,
// 20 stage changes: every device receives every version, in order, once.
func TestEveryDeviceEveryStage(t *testing.T) {
	const n, changes, event = 2000, 20, "fight-2026-11-15"
	f := startFleet(t, 3, redistest.Options{}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The event exists before devices subscribe (a producer set its first stage).
	first := f.set(ctx, event, "pre-show")
	devs := f.startDevices(ctx, n, event, -1)
	eventually(t, 60*time.Second, "2,000 devices connected", func() bool { return f.connections() == n })
	eventually(t, 30*time.Second, "every device caught up on the first stage", func() bool { return allOn(devs, event, first.V) })
	// Subscriptions are in once each proxy reports the devices on the event.
	eventually(t, 10*time.Second, "every proxy reports its devices", func() bool {
		r, err := f.bc.Report(ctx, event, 0)
		return err == nil && r.Devices == n
	})

	var lat []time.Duration
	want := []uint64{first.V}
	for i := 1; i <= changes; i++ {
		start := time.Now()
		r := f.set(ctx, event, fmt.Sprintf("round-%d", i))
		eventually(t, 30*time.Second, fmt.Sprintf("every device on v%d", r.V), func() bool { return allOn(devs, event, r.V) })
		lat = append(lat, time.Since(start))
		want = append(want, r.V)
	}
	last := want[len(want)-1]
	for i, d := range devs {
		if vs := d.versions(); !slices.Equal(vs, want) {
			t.Fatalf("device %d received %v, want every version once, in order: %v", i, vs, want)
		}
	}
	slices.Sort(lat)
	t.Logf("%d devices x %d changes: set -> last device p50 %v, max %v (in-process, -race off or on)", n, changes, lat[len(lat)/2], lat[len(lat)-1])

	// The merged delivery report sees every device on the last version.
	eventually(t, 10*time.Second, "delivery report complete", func() bool {
		r, err := f.bc.Report(ctx, event, last)
		return err == nil && r.Sent == n && r.Acked == n && r.Devices == n && r.Proxies == 3 && r.SentMS["p100"] != nil
	})
	r, _ := f.bc.Report(ctx, event, last)
	t.Logf("report v%d: devices %d sent %d acked %d, p50 %dms p100 %dms", r.V, r.Devices, r.Sent, r.Acked, *r.SentMS["p50"], *r.SentMS["p100"])
}

// TestRedisLoss: Redis killed mid-event. Devices stay connected, the producer
// gets a clear 503 and nothing is half written; when Redis returns (with its
// AOF, as in production) proxies resubscribe, re-read and every device ends on
// the latest stage. Then the proxies' subscriptions are killed from outside and
// a change published in the gap is still delivered (subscribe-then-read).
func TestRedisLoss(t *testing.T) {
	const n, event = 300, "nfl-xmas"
	f := startFleet(t, 3, redistest.Options{AppendOnly: true}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devs := f.startDevices(ctx, n, event, -1)
	eventually(t, 30*time.Second, "devices connected", func() bool { return f.connections() == n })
	r := f.set(ctx, event, "kickoff")
	eventually(t, 10*time.Second, "kickoff everywhere", func() bool { return allOn(devs, event, r.V) })

	f.redis.Kill()
	_, err := f.bc.SetStage(ctx, event, "touchdown", nil, "td-1")
	var ae *producer.APIError
	if !errors.As(err, &ae) || ae.Status != 503 || (ae.Code != "outcome_unknown" && ae.Code != "engine_unavailable") {
		t.Fatalf("stage change with Redis down: %v, want 503 outcome_unknown or engine_unavailable", err)
	}
	// The 503 took the retry budget (4.5 s) with Redis down; the devices stayed.
	if c := f.connections(); c != n {
		t.Fatalf("%d of %d devices still connected while Redis is down; want all", c, n)
	}

	f.redis.Restart()
	td := f.setRetrying(ctx, event, "touchdown", "td-1", 20*time.Second)
	rec, err := newEngine(t, f.redis.Addr()).Recent(ctx, event, 10)
	if err != nil || len(rec) != 2 || rec[0].V != r.V || rec[1] != (wire.Stage{Event: event, Key: "touchdown", V: td.V, TS: td.TS}) {
		t.Fatalf("after restart the log is %+v (%v): want kickoff then touchdown once, nothing half written", rec, err)
	}
	eventually(t, 20*time.Second, "every device on touchdown after Redis returned", func() bool { return allOn(devs, event, td.V) })

	// Kill only the proxies' pub/sub connections, then change the stage at once:
	// the publish falls in the gap; the re-read on resubscribe repairs it.
	if out, err := f.redis.Cli(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatalf("client kill: %v %s", err, out)
	}
	gap := f.set(ctx, event, "field-goal")
	eventually(t, 20*time.Second, "every device on the change published while subscriptions were down", func() bool { return allOn(devs, event, gap.V) })
	for i, d := range devs {
		// Devices stayed connected: each version at most once, ascending, ending
		// on the change published in the gap.
		vs := d.versions()
		if !slices.IsSorted(vs) || len(slices.Compact(slices.Clone(vs))) != len(vs) || vs[len(vs)-1] != gap.V {
			t.Fatalf("device %d versions %v: out of order, duplicated, or not ending on v%d", i, vs, gap.V)
		}
	}
}

// TestRedisRestartEmpty: Redis comes back without its data, and the next change
// goes through a broadcaster that never saw the event. Versions still increase
// (the engine's clock floor), so devices (which hold the old versions) accept the
// next change instead of ignoring it as stale.
func TestRedisRestartEmpty(t *testing.T) {
	const n, event = 50, "ev"
	f := startFleet(t, 2, redistest.Options{}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devs := f.startDevices(ctx, n, event, -1)
	eventually(t, 30*time.Second, "devices connected", func() bool { return f.connections() == n })
	var last broadcaster.StageReply
	for i := 0; i < 5; i++ {
		last = f.set(ctx, event, fmt.Sprintf("s%d", i))
	}
	eventually(t, 10*time.Second, "devices on v5", func() bool { return allOn(devs, event, last.V) })
	f.redis.Kill()
	f.redis.Restart() // empty: nothing persisted
	// The next change comes through another broadcaster, one that never saw the
	// event (a second replica, or the first one restarted): no process state helps.
	bs2, err := broadcaster.New(broadcaster.Config{Token: token}, newEngine(t, f.redis.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	f.bc = &producer.Client{BaseURL: "http://" + serveHTTP(t, bs2.Handler()), Token: token}
	next := f.setRetrying(ctx, event, "after-restart", "ar-1", 20*time.Second)
	if next.V <= last.V {
		t.Fatalf("version went back from v%d to v%d after Redis lost its data", last.V, next.V)
	}
	eventually(t, 20*time.Second, "devices on the post-restart stage", func() bool { return allOn(devs, event, next.V) })
}

// TestDrainMovesDevices: a proxy drains; its devices get reconnect frames spread
// over the window, reconnect to the other proxies, and end on the latest stage.
func TestDrainMovesDevices(t *testing.T) {
	const n, event = 300, "ev"
	f := startFleet(t, 3, redistest.Options{}, proxy.Config{DrainWindow: time.Second, ReconnectJitter: 500 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devs := f.startDevices(ctx, n, event, 0) // all start on proxy 0
	eventually(t, 30*time.Second, "devices on proxy 0", func() bool { return f.proxies[0].Connections() == n })
	r := f.set(ctx, event, "round-1")
	eventually(t, 10*time.Second, "round-1", func() bool { return allOn(devs, event, r.V) })

	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	start := time.Now()
	if err := f.proxies[0].Drain(dctx); err != nil {
		t.Fatal(err)
	}
	drained := time.Since(start)
	eventually(t, 20*time.Second, "devices reconnected elsewhere", func() bool {
		return f.proxies[0].Connections() == 0 && f.proxies[1].Connections()+f.proxies[2].Connections() == n
	})
	r2 := f.set(ctx, event, "round-2")
	eventually(t, 10*time.Second, "round-2 everywhere after the drain", func() bool { return allOn(devs, event, r2.V) })
	for i, d := range devs {
		if got := d.c.Reconnects.Load(); got != 1 {
			t.Fatalf("device %d honoured %d reconnect frames, want 1", i, got)
		}
	}
	if drained < 500*time.Millisecond {
		t.Fatalf("drain of %d devices took %v: reconnects were not spread over the 1s window", n, drained)
	}
	t.Logf("drained %d devices in %v", n, drained)
}

// TestCorruptEntryDoesNotStall: an undecodable entry lands in an event's log
// (a bad write by another tool, a bug). Proxies that re-read the log skip it;
// devices that join get the newest good stage; live changes keep flowing.
func TestCorruptEntryDoesNotStall(t *testing.T) {
	const n, event = 60, "corrupt"
	f := startFleet(t, 2, redistest.Options{}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := f.set(ctx, event, "a")
	if out, err := f.redis.Cli(ctx, "XADD", "sc:{"+event+"}:log", "*", "s", "{not json"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	devs := f.startDevices(ctx, n, event, -1) // their subs make each proxy read the log
	eventually(t, 20*time.Second, "devices on the newest good stage", func() bool { return allOn(devs, event, first.V) })
	next := f.set(ctx, event, "b")
	eventually(t, 10*time.Second, "the next change everywhere", func() bool { return allOn(devs, event, next.V) })
	var skipped float64
	for _, p := range f.proxies {
		skipped += metricValue(t, p, "stagecast_proxy_skipped_log_entries_total")
	}
	if skipped == 0 {
		t.Fatal("no proxy counted the corrupt entry it skipped")
	}
}
