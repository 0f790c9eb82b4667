// Package enginetest is the conformance suite every stagecast engine passes: the
// in-memory engine and the Redis engine run the same tests.
package enginetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Engine is the surface the suite checks.
type Engine interface {
	SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error)
	Recent(ctx context.Context, event string, n int) ([]wire.Stage, error)
	Subscribe(ctx context.Context, event string, onStage func(wire.Stage), onSubscribed func()) error
	PutDelivery(ctx context.Context, r engine.DeliveryReport) error
	Delivery(ctx context.Context, event string, v uint64) ([]engine.ProxyDelivery, error)
	PutStageMap(ctx context.Context, event string, raw []byte, updatedMS int64) (uint64, error)
	SetLive(ctx context.Context, event string, live bool) error
	Snapshot(ctx context.Context, event string) (engine.Snapshot, error)
	Exists(ctx context.Context, event string) (bool, error)
	Events(ctx context.Context, limit int) ([]engine.EventSummary, error)
	PutAudit(ctx context.Context, event string, a engine.AuditEntry) error
	Audit(ctx context.Context, event string, n int) ([]engine.AuditEntry, error)
	Arm(ctx context.Context, req engine.ArmRequest) (wire.Stage, error)
	Schedules(ctx context.Context, event string) ([]wire.Stage, error)
	CancelSchedule(ctx context.Context, event, id string, v uint64) error
	DueSchedules(ctx context.Context, nowMS int64, limit int) ([]engine.ScheduleRef, error)
	FireSchedule(ctx context.Context, event, id string) (wire.Stage, error)
	Time(ctx context.Context) (time.Time, error)
	PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error
	ProxyLoads(ctx context.Context, nowMS int64) ([]engine.ProxyLoad, error)
}

// Run runs the suite. newEngine returns a fresh, empty engine with a log length
// of logLen (the suite checks the bound).
func Run(t *testing.T, newEngine func(t *testing.T, logLen int) Engine) {
	t.Run("VersionsIncrease", func(t *testing.T) { testVersions(t, newEngine(t, 8)) })
	t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, newEngine(t, 8)) })
	t.Run("Floor", func(t *testing.T) { testFloor(t, newEngine(t, 8)) })
	t.Run("RecentBounded", func(t *testing.T) { testRecent(t, newEngine(t, 4)) })
	t.Run("SubscribeOrder", func(t *testing.T) { testSubscribe(t, newEngine(t, 8)) })
	t.Run("ConcurrentSets", func(t *testing.T) { testConcurrent(t, newEngine(t, 512)) })
	t.Run("Delivery", func(t *testing.T) { testDelivery(t, newEngine(t, 8)) })
	t.Run("Target", func(t *testing.T) { testTarget(t, newEngine(t, 8)) })
	t.Run("StageMapSnapshot", func(t *testing.T) { testSnapshot(t, newEngine(t, 8)) })
	t.Run("Exists", func(t *testing.T) { testExists(t, newEngine(t, 8)) })
	t.Run("EventsAndAudit", func(t *testing.T) { testEventsAndAudit(t, newEngine(t, 8)) })
	t.Run("Digest", func(t *testing.T) { testDigest(t, newEngine(t, 8)) })
	t.Run("SchedulesAtOneTime", func(t *testing.T) { testSchedulesAtOneTime(t, newEngine(t, 50)) })
	t.Run("Schedules", func(t *testing.T) { testSchedules(t, newEngine(t, 8)) })
	t.Run("ProxyLoads", func(t *testing.T) { testProxyLoads(t, newEngine(t, 8)) })
}

// testProxyLoads: the latest load of each proxy (and prefetch server), stale
// ones left out.
func testProxyLoads(t *testing.T, e Engine) {
	now := time.Now().UnixMilli()
	for _, l := range []engine.ProxyLoad{
		{ID: "p1", URL: "ws://a/v1/ws", Connections: 5, Capacity: 10, AdmitRate: 100, AtMS: now - 100},
		{ID: "p1", URL: "ws://a/v1/ws", Connections: 6, Capacity: 10, AdmitRate: 100, AtMS: now},
		{ID: "old", AtMS: now - 2*engine.ProxyLoadTTL},
		{ID: "pf", Tier: "prefetch", Shedding: 2, AtMS: now},
	} {
		if err := e.PutProxyLoad(ctx(t), l); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.ProxyLoads(ctx(t), now)
	if err != nil || len(got) != 2 || got[0].ID != "p1" || got[0].Connections != 6 || got[1].ID != "pf" || got[1].Shedding != 2 {
		t.Fatalf("loads %+v %v", got, err)
	}
	// hardening #8: an entry from the future never counts (it would never age out)
	if err := e.PutProxyLoad(ctx(t), engine.ProxyLoad{ID: "future", URL: "ws://f/v1/ws", AtMS: time.Now().Add(time.Hour).UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		loads, err := e.ProxyLoads(ctx(t), time.Now().UnixMilli())
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range loads {
			if l.ID == "future" {
				t.Fatalf("a load stamped an hour ahead counts: %+v", l)
			}
		}
	}
}

// testSchedules: arming assigns the version of the fire time (newer than any
// change before it), publishes the arm, lists it, is idempotent by id; firing
// writes exactly that version once; a cancel (of the right version) wins; a
// newer change supersedes.
// testSchedulesAtOneTime (hardening #9): two arms at one time (one per
// target) get distinct versions, and firing either fires both, in version
// order: no acknowledged arm is dropped as superseded by its twin. A full
// event refuses the next arm with ErrTooManySchedules.
func testSchedulesAtOneTime(t *testing.T, e Engine) {
	at := time.Now().Add(time.Hour).UnixMilli()
	tv, err := e.Arm(ctx(t), engine.ArmRequest{ID: "s-tv", Event: "twin", Key: "ko", AtMS: at, Target: &wire.Target{Platforms: []string{"tv"}}})
	if err != nil {
		t.Fatal(err)
	}
	mob, err := e.Arm(ctx(t), engine.ArmRequest{ID: "s-mob", Event: "twin", Key: "ko", AtMS: at, Target: &wire.Target{Platforms: []string{"mobile"}}})
	if err != nil {
		t.Fatal(err)
	}
	if tv.V == mob.V {
		t.Fatalf("two arms at one time share v%d", tv.V)
	}
	later, earlier := "s-mob", "s-tv"
	if mob.V < tv.V {
		later, earlier = earlier, later
	}
	if _, err := e.FireSchedule(ctx(t), "twin", later); err != nil {
		t.Fatalf("fire the later twin: %v", err)
	}
	if _, err := e.FireSchedule(ctx(t), "twin", earlier); !errors.Is(err, engine.ErrScheduleNotFound) {
		t.Fatalf("the earlier twin after the later fired: %v, want it fired already (not found)", err)
	}
	log, err := e.Recent(ctx(t), "twin", 10)
	if err != nil || len(log) != 2 || log[0].V != min(tv.V, mob.V) || log[1].V != max(tv.V, mob.V) {
		t.Fatalf("log %+v %v: both twins, in version order", log, err)
	}
	for i := range engine.MaxSchedules {
		if _, err := e.Arm(ctx(t), engine.ArmRequest{ID: fmt.Sprintf("f%d", i), Event: "full", Key: "k", AtMS: at + int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Arm(ctx(t), engine.ArmRequest{ID: "one-more", Event: "full", Key: "k", AtMS: at}); !errors.Is(err, engine.ErrTooManySchedules) {
		t.Fatalf("arm past the bound: %v, want ErrTooManySchedules", err)
	}
}

func testSchedules(t *testing.T, e Engine) {
	got := make(chan wire.Stage, 16)
	sctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	subscribed := make(chan struct{}, 4)
	go func() {
		_ = e.Subscribe(sctx, "sch", func(s wire.Stage) { got <- s }, func() { subscribed <- struct{}{} })
	}()
	<-subscribed
	next := func() wire.Stage {
		t.Helper()
		select {
		case s := <-got:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no message")
			return wire.Stage{}
		}
	}
	at := time.Now().Add(time.Hour).UnixMilli()
	armed, err := e.Arm(ctx(t), engine.ArmRequest{ID: "s1", Event: "sch", Key: "knockout", AtMS: at, Critical: true})
	if err != nil || armed.V != uint64(at)*1000 || armed.Arm == nil || armed.Arm.ID != "s1" || armed.TS != at || armed.Priority != "critical" {
		t.Fatalf("arm: %+v %v", armed, err)
	}
	if m := next(); m.Arm == nil || m.V != armed.V || m.Arm.Cancel {
		t.Fatalf("published %+v, want the arm", m)
	}
	if again, err := e.Arm(ctx(t), engine.ArmRequest{ID: "s1", Event: "sch", Key: "knockout", AtMS: at, Critical: true}); err != nil || again.V != armed.V || again.Key != "knockout" {
		t.Fatalf("re-arming the same id: %+v %v", again, err)
	}
	if _, err := e.Arm(ctx(t), engine.ArmRequest{ID: "s1", Event: "sch", Key: "other", AtMS: at + 5}); !errors.Is(err, engine.ErrScheduleConflict) {
		t.Fatalf("re-arming the same id with another body: %v, want ErrScheduleConflict", err)
	}
	if list, _ := e.Schedules(ctx(t), "sch"); len(list) != 1 || list[0].V != armed.V {
		t.Fatalf("schedules %+v", list)
	}
	before := set(t, e, engine.SetRequest{Event: "sch", Key: "round-9"}) // a change before T
	next()
	if before.Stage.V >= armed.V {
		t.Fatalf("a change before T got v%d >= the armed v%d", before.Stage.V, armed.V)
	}
	due, _ := e.DueSchedules(ctx(t), at, 10)
	if len(due) != 1 || due[0].ID != "s1" || due[0].Event != "sch" {
		t.Fatalf("due %+v", due)
	}
	fired, err := e.FireSchedule(ctx(t), "sch", "s1")
	if err != nil || fired.V != armed.V || fired.Arm != nil || fired.Key != "knockout" {
		t.Fatalf("fire: %+v %v", fired, err)
	}
	if m := next(); m.Arm != nil || m.V != armed.V {
		t.Fatalf("published %+v, want the fired stage", m)
	}
	if rec, _ := e.Recent(ctx(t), "sch", 1); len(rec) != 1 || rec[0].V != armed.V || rec[0].Arm != nil {
		t.Fatalf("log %+v", rec)
	}
	if _, err := e.FireSchedule(ctx(t), "sch", "s1"); !errors.Is(err, engine.ErrScheduleNotFound) {
		t.Fatalf("second fire: %v", err)
	}
	// Cancel: the version must match; the cancel is published; nothing fires.
	s2, _ := e.Arm(ctx(t), engine.ArmRequest{ID: "s2", Event: "sch", Key: "x", AtMS: at + 1000})
	next()
	if err := e.CancelSchedule(ctx(t), "sch", "s2", s2.V+1); !errors.Is(err, engine.ErrScheduleChanged) {
		t.Fatalf("cancel with another version: %v", err)
	}
	if err := e.CancelSchedule(ctx(t), "sch", "s2", s2.V); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.Arm == nil || !m.Arm.Cancel || m.Arm.ID != "s2" {
		t.Fatalf("published %+v, want the cancel", m)
	}
	if _, err := e.FireSchedule(ctx(t), "sch", "s2"); !errors.Is(err, engine.ErrScheduleNotFound) {
		t.Fatalf("fire after cancel: %v", err)
	}
	if due, _ := e.DueSchedules(ctx(t), at+5000, 10); len(due) != 0 {
		t.Fatalf("due after cancel %+v", due)
	}
	// Superseded: a newer change before the fire.
	s3, _ := e.Arm(ctx(t), engine.ArmRequest{ID: "s3", Event: "sch", Key: "y", AtMS: at + 2000})
	next()
	set(t, e, engine.SetRequest{Event: "sch", Key: "later", MinVersion: s3.V + 1})
	next()
	if _, err := e.FireSchedule(ctx(t), "sch", "s3"); !errors.Is(err, engine.ErrScheduleSuperseded) {
		t.Fatalf("fire of a superseded schedule: %v", err)
	}
	if now, err := e.Time(ctx(t)); err != nil || time.Until(now).Abs() > 5*time.Second {
		t.Fatalf("engine time %v %v", now, err)
	}
}

// testDigest: a stage change carries the digest of its key's payloads in the
// map stored at that moment (none for a key the map lacks).
func testDigest(t *testing.T, e Engine) {
	put := func(raw string) wire.StageMap {
		t.Helper()
		if _, err := e.PutStageMap(ctx(t), "dg", []byte(raw), 1); err != nil {
			t.Fatal(err)
		}
		m, err := wire.ParseStageMap([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m1 := put(`{"stages":{"a":{"default":{"x":1},"segments":{"s1":{"x":2}}},"b":{"default":{}}}}`)
	if got := set(t, e, engine.SetRequest{Event: "dg", Key: "a"}).Stage.Digest; got != wire.StageDigest(m1.Stages["a"]) || !wire.ValidDigest(got) {
		t.Fatalf("digest of a = %q, want %q", got, wire.StageDigest(m1.Stages["a"]))
	}
	if got := set(t, e, engine.SetRequest{Event: "dg", Key: "zz"}).Stage.Digest; got != "" {
		t.Fatalf("a key outside the map has digest %q", got)
	}
	m2 := put(`{"stages":{"a":{"default":{"x":1},"segments":{"s1":{"x":3}}}}}`)
	got := set(t, e, engine.SetRequest{Event: "dg", Key: "a"}).Stage.Digest
	if got != wire.StageDigest(m2.Stages["a"]) || got == wire.StageDigest(m1.Stages["a"]) {
		t.Fatalf("after a segment changed, digest %q (old %q)", got, wire.StageDigest(m1.Stages["a"]))
	}
	if rec, _ := e.Recent(ctx(t), "dg", 1); len(rec) != 1 || rec[0].Digest != got {
		t.Fatalf("the log lost the digest: %+v", rec)
	}
}

// testEventsAndAudit: the console's list (events with a stage or a map, most
// recently changed first, with current stage and window) and audit trail
// (newest first, bounded).
func testEventsAndAudit(t *testing.T, e Engine) {
	if _, err := e.PutStageMap(ctx(t), "list-a", []byte(`{"stages":{"x":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // distinct millisecond stamps for the order
	set(t, e, engine.SetRequest{Event: "list-b", Key: "round-1"})
	if err := e.SetLive(ctx(t), "list-b", true); err != nil {
		t.Fatal(err)
	}
	// The index is written off the stage-change path (hardening #8): poll.
	var evs []engine.EventSummary
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if evs, err = e.Events(ctx(t), 10); err != nil {
			t.Fatal(err)
		}
		if len(evs) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(evs) != 2 || evs[0].Event != "list-b" || evs[0].Current == nil || evs[0].Current.Key != "round-1" || !evs[0].Live ||
		evs[1].Event != "list-a" || evs[1].Current != nil || !evs[1].HasMap || evs[1].Live {
		t.Fatalf("events %+v", evs)
	}
	if one, _ := e.Events(ctx(t), 1); len(one) != 1 {
		t.Fatalf("limit 1 gave %d", len(one))
	}
	for i := range engine.MaxAudit + 5 {
		if err := e.PutAudit(ctx(t), "list-b", engine.AuditEntry{AtMS: int64(i), Producer: "alice", Action: "set_stage", Stage: fmt.Sprint(i), Result: "created"}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.Audit(ctx(t), "list-b", 1000)
	if err != nil || len(got) != engine.MaxAudit || got[0].AtMS != engine.MaxAudit+4 || got[0].Producer != "alice" {
		t.Fatalf("audit: %d entries (newest %+v), %v", len(got), got[0], err)
	}
	if few, _ := e.Audit(ctx(t), "list-b", 3); len(few) != 3 {
		t.Fatalf("audit n=3 gave %d", len(few))
	}
}

// testExists: an event exists once it has a stage or a stage map; subscribing,
// delivery reports and the live window alone do not create it.
func testExists(t *testing.T, e Engine) {
	exists := func(ev string) bool {
		t.Helper()
		ok, err := e.Exists(ctx(t), ev)
		if err != nil {
			t.Fatalf("Exists(%s): %v", ev, err)
		}
		return ok
	}
	if exists("ex-none") {
		t.Fatal("an untouched event exists")
	}
	sctx, cancel := context.WithCancel(ctx(t))
	subscribed := make(chan struct{}, 1)
	go func() { _ = e.Subscribe(sctx, "ex-none", func(wire.Stage) {}, func() { subscribed <- struct{}{} }) }()
	<-subscribed
	cancel()
	if err := e.PutDelivery(ctx(t), engine.DeliveryReport{Proxy: "p1", AtMS: 1, Events: []engine.EventDelivery{{Event: "ex-none", Devices: 3}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.SetLive(ctx(t), "ex-none", true); err != nil {
		t.Fatal(err)
	}
	if exists("ex-none") {
		t.Fatal("subscribing, a delivery report or a live window created the event")
	}
	set(t, e, engine.SetRequest{Event: "ex-stage", Key: "k"})
	if !exists("ex-stage") {
		t.Fatal("an event with a stage does not exist")
	}
	if _, err := e.PutStageMap(ctx(t), "ex-map", []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	if !exists("ex-map") {
		t.Fatal("an event with a stage map does not exist")
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func set(t *testing.T, e Engine, req engine.SetRequest) engine.SetResult {
	t.Helper()
	if req.TS == 0 {
		req.TS = time.Now().UnixMilli()
	}
	r, err := e.SetStage(ctx(t), req)
	if err != nil {
		t.Fatalf("SetStage(%+v): %v", req, err)
	}
	return r
}

func testVersions(t *testing.T, e Engine) {
	var last uint64
	for i := 0; i < 5; i++ {
		r := set(t, e, engine.SetRequest{Event: "ev-a", Key: fmt.Sprintf("round-%d", i), TS: 1000 + int64(i)})
		if r.Stage.V <= last || r.Replayed {
			t.Fatalf("version %d after %d (replayed=%v)", r.Stage.V, last, r.Replayed)
		}
		if r.Stage.Event != "ev-a" || r.Stage.Key != fmt.Sprintf("round-%d", i) || r.Stage.TS != 1000+int64(i) {
			t.Fatalf("stage %+v", r.Stage)
		}
		last = r.Stage.V
	}
	// A new event's first version is at least the engine's clock in
	// microseconds: versions rise even when an engine lost an event's history
	// (the clock moved on since it was written).
	before := uint64(time.Now().Add(-time.Second).UnixMicro())
	if r := set(t, e, engine.SetRequest{Event: "ev-b", Key: "x"}); r.Stage.V < before || r.Stage.V >= 1<<53 {
		t.Fatalf("first version of a new event = %d, want >= the clock in microseconds (%d) and < 2^53", r.Stage.V, before)
	}
	rec, err := e.Recent(ctx(t), "ev-a", 1)
	if err != nil || len(rec) != 1 || rec[0].V != last || rec[0].Key != "round-4" {
		t.Fatalf("Recent(1) = %+v, %v", rec, err)
	}
	none, err := e.Recent(ctx(t), "ev-none", 5)
	if err != nil || len(none) != 0 {
		t.Fatalf("Recent of unknown event = %+v, %v", none, err)
	}
}

func testIdempotency(t *testing.T, e Engine) {
	a := set(t, e, engine.SetRequest{Event: "ev", Key: "round-1", IdempotencyKey: "k1"})
	b := set(t, e, engine.SetRequest{Event: "ev", Key: "round-1", IdempotencyKey: "k1"})
	if !b.Replayed || b.Stage != a.Stage {
		t.Fatalf("retry: %+v, first: %+v", b, a)
	}
	rec, _ := e.Recent(ctx(t), "ev", 10)
	if len(rec) != 1 {
		t.Fatalf("retry made a new version: %+v", rec)
	}
	_, err := e.SetStage(ctx(t), engine.SetRequest{Event: "ev", Key: "round-2", IdempotencyKey: "k1", TS: 1})
	if !errors.Is(err, engine.ErrIdempotencyConflict) {
		t.Fatalf("reuse for another stage: err = %v", err)
	}
	c := set(t, e, engine.SetRequest{Event: "ev", Key: "round-2", IdempotencyKey: "k2"})
	if c.Replayed || c.Stage.V <= a.Stage.V {
		t.Fatalf("new key: %+v", c)
	}
	// Keys are per event.
	d := set(t, e, engine.SetRequest{Event: "ev-other", Key: "round-1", IdempotencyKey: "k1"})
	if d.Replayed {
		t.Fatal("idempotency key leaked across events")
	}
}

func testFloor(t *testing.T, e Engine) {
	set(t, e, engine.SetRequest{Event: "ev", Key: "a"})
	floor := uint64(time.Now().Add(24 * time.Hour).UnixMicro()) // above the clock
	r := set(t, e, engine.SetRequest{Event: "ev", Key: "b", MinVersion: floor})
	if r.Stage.V != floor {
		t.Fatalf("floor: v = %d, want %d", r.Stage.V, floor)
	}
	r = set(t, e, engine.SetRequest{Event: "ev", Key: "c", MinVersion: 50})
	if r.Stage.V != floor+1 {
		t.Fatalf("after floor: v = %d, want %d (newest + 1 beats the clock)", r.Stage.V, floor+1)
	}
}

func testRecent(t *testing.T, e Engine) {
	for i := 1; i <= 10; i++ {
		set(t, e, engine.SetRequest{Event: "ev", Key: fmt.Sprintf("s%d", i)})
	}
	rec, err := e.Recent(ctx(t), "ev", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec) != 4 {
		t.Fatalf("log holds %d entries, want the bound 4", len(rec))
	}
	for i, st := range rec {
		if st.Key != fmt.Sprintf("s%d", 7+i) || (i > 0 && st.V <= rec[i-1].V) {
			t.Fatalf("rec[%d] = %+v (want s%d, versions ascending)", i, st, 7+i)
		}
	}
}

func testSubscribe(t *testing.T, e Engine) {
	c, cancel := context.WithCancel(context.Background())
	defer cancel()
	subscribed := make(chan struct{}, 4)
	got := make(chan wire.Stage, 100)
	done := make(chan error, 1)
	go func() {
		done <- e.Subscribe(c, "ev-sub", func(s wire.Stage) { got <- s }, func() { subscribed <- struct{}{} })
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("onSubscribed not called")
	}
	// Another event's changes are not delivered.
	set(t, e, engine.SetRequest{Event: "ev-other", Key: "x"})
	for i := 1; i <= 20; i++ {
		set(t, e, engine.SetRequest{Event: "ev-sub", Key: fmt.Sprintf("s%d", i)})
	}
	var last uint64
	for i := 1; i <= 20; i++ {
		select {
		case s := <-got:
			if s.Event != "ev-sub" || s.V <= last || s.Key != fmt.Sprintf("s%d", i) {
				t.Fatalf("message %d = %+v (after v%d)", i, s, last)
			}
			last = s.V
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not received", i)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return after cancel")
	}
}

func testConcurrent(t *testing.T, e Engine) {
	const n = 200
	var wg sync.WaitGroup
	vs := make(chan uint64, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := e.SetStage(ctx(t), engine.SetRequest{Event: "ev", Key: "k", TS: int64(i + 1)})
			if err != nil {
				t.Error(err)
				return
			}
			vs <- r.Stage.V
		}(i)
	}
	wg.Wait()
	close(vs)
	seen := map[uint64]bool{}
	for v := range vs {
		if seen[v] {
			t.Fatalf("version %d assigned twice", v)
		}
		seen[v] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct versions for %d changes", len(seen), n)
	}
	// The log holds exactly the versions handed out, in order.
	rec, err := e.Recent(ctx(t), "ev", 512)
	if err != nil || len(rec) != n {
		t.Fatalf("log holds %d entries (%v), want %d", len(rec), err, n)
	}
	for i, st := range rec {
		if !seen[st.V] || (i > 0 && st.V <= rec[i-1].V) {
			t.Fatalf("log entry %d: v%d (not handed out, or out of order)", i, st.V)
		}
	}
}

func testDelivery(t *testing.T, e Engine) {
	now := time.Now().UnixMilli()
	rep := func(proxy string, devices int64, sent, acked uint64) engine.DeliveryReport {
		return engine.DeliveryReport{Proxy: proxy, AtMS: now, Events: []engine.EventDelivery{{
			Event: "ev", Devices: devices,
			Versions: []engine.VersionDelivery{{V: 3, Sent: sent, Acked: acked, Latency: []engine.Bucket{{UpperMS: 10, Count: sent}}}},
		}}}
	}
	if err := e.PutDelivery(ctx(t), rep("p1", 10, 9, 4)); err != nil {
		t.Fatal(err)
	}
	if err := e.PutDelivery(ctx(t), rep("p2", 5, 5, 5)); err != nil {
		t.Fatal(err)
	}
	// A later report replaces the proxy's earlier counters.
	if err := e.PutDelivery(ctx(t), rep("p1", 10, 10, 6)); err != nil {
		t.Fatal(err)
	}
	got, err := e.Delivery(ctx(t), "ev", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("Delivery = %+v", got)
	}
	var sent, acked uint64
	var devices int64
	for _, pd := range got {
		sent += pd.Version.Sent
		acked += pd.Version.Acked
		devices += pd.Devices
		if len(pd.Version.Latency) != 1 || pd.AtMS != now {
			t.Fatalf("proxy delivery %+v", pd)
		}
	}
	if sent != 15 || acked != 11 || devices != 15 {
		t.Fatalf("sent=%d acked=%d devices=%d", sent, acked, devices)
	}
	other, err := e.Delivery(ctx(t), "ev", 4)
	if err != nil || len(other) != 2 || other[0].Version.V != 0 {
		t.Fatalf("version without figures: %+v %v", other, err)
	}
	// A proxy that stopped reporting longer than PresenceTTL ago is dropped from
	// the presence: its devices no longer count, its sends still do.
	old := rep("p-dead", 7, 7, 7)
	old.AtMS = time.Now().Add(-2 * engine.PresenceTTL).UnixMilli()
	if err := e.PutDelivery(ctx(t), old); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ { // the first read prunes, the second sees it pruned
		got, err = e.Delivery(ctx(t), "ev", 3)
		if err != nil {
			t.Fatal(err)
		}
		sent, devices = 0, 0
		for _, pd := range got {
			sent += pd.Version.Sent
			devices += pd.Devices
		}
		if sent != 22 || devices != 15 {
			t.Fatalf("round %d with a dead proxy: sent=%d devices=%d, want 22 and 15", round, sent, devices)
		}
	}
}

func testTarget(t *testing.T, e Engine) {
	r := set(t, e, engine.SetRequest{Event: "ev", Key: "tv-only", Target: &wire.Target{Platforms: []string{"tv"}}})
	if r.Stage.Target == nil || r.Stage.Target.Platforms[0] != "tv" {
		t.Fatalf("target lost: %+v", r.Stage)
	}
	rec, _ := e.Recent(ctx(t), "ev", 1)
	if len(rec) != 1 || rec[0].Target == nil || !rec[0].Target.Matches("tv", "") || rec[0].Target.Matches("mobile", "") {
		t.Fatalf("stored target: %+v", rec)
	}
	r = set(t, e, engine.SetRequest{Event: "ev", Key: "all", Target: &wire.Target{}})
	if r.Stage.Target != nil {
		t.Fatalf("empty target kept: %+v", r.Stage.Target)
	}
}

// testSnapshot: a stored map, the current stage and the window come back in one
// Snapshot. With client-side caching reads are eventually consistent (a change
// is seen once Redis's invalidation arrives), so each state is awaited with a
// deadline rather than read once.
func testSnapshot(t *testing.T, e Engine) {
	snap, err := e.Snapshot(ctx(t), "ev")
	if err != nil || snap.Map != nil || snap.Current != nil || snap.Live {
		t.Fatalf("empty event snapshot = %+v, %v", snap, err)
	}
	m1 := []byte(`{"stages":{"a":{"default":{"n":1}}}}`)
	v1, err := e.PutStageMap(ctx(t), "ev", m1, 111)
	if err != nil || v1 == 0 {
		t.Fatalf("put: %d %v", v1, err)
	}
	st := set(t, e, engine.SetRequest{Event: "ev", Key: "a"})
	if err := e.SetLive(ctx(t), "ev", true); err != nil {
		t.Fatal(err)
	}
	awaitSnapshot(t, e, "map v1, current, live", func(s engine.Snapshot) bool {
		return s.Map != nil && string(s.Map.Raw) == string(m1) && s.Map.Version == v1 && s.Map.UpdatedMS == 111 &&
			s.Current != nil && s.Current.V == st.Stage.V && s.Current.Key == "a" && s.Live
	})
	m2 := []byte(`{"stages":{"b":{"default":[2]}},"ttl_seconds":60}`)
	v2, err := e.PutStageMap(ctx(t), "ev", m2, 222)
	if err != nil || v2 <= v1 {
		t.Fatalf("replace: v%d after v%d, %v", v2, v1, err)
	}
	if err := e.SetLive(ctx(t), "ev", false); err != nil {
		t.Fatal(err)
	}
	awaitSnapshot(t, e, "map v2, window off", func(s engine.Snapshot) bool {
		return s.Map != nil && string(s.Map.Raw) == string(m2) && s.Map.Version == v2 && !s.Live
	})
}

func awaitSnapshot(t *testing.T, e Engine, what string, ok func(engine.Snapshot) bool) {
	t.Helper()
	var last engine.Snapshot
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		s, err := e.Snapshot(ctx(t), "ev")
		if err != nil {
			t.Fatal(err)
		}
		if ok(s) {
			return
		}
		last = s
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("snapshot never showed %s; last: map=%+v current=%+v live=%v", what, last.Map, last.Current, last.Live)
}
