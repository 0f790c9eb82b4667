package redisengine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

func newEngine(t *testing.T, cfg redisengine.Config) *redisengine.Engine {
	t.Helper()
	e, err := redisengine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func cli(t *testing.T, srv *redistest.Server, args ...string) string {
	t.Helper()
	out, err := srv.Cli(context.Background(), args...)
	if err != nil {
		t.Fatalf("redis-cli %v: %v %s", args, err, out)
	}
	return strings.TrimSpace(out)
}

// Versions never go backwards, whatever Redis loses: the newest entries
// (an asynchronous replica promoted), everything (a restart without AOF, a
// FLUSHALL), or the event's keys (expiry). No broadcaster state is involved.
func TestVersionsSurviveDataLoss(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := newEngine(t, redisengine.Config{Addrs: []string{srv.Addr()}})
	ctx := context.Background()
	set := func(key string) uint64 {
		t.Helper()
		r, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: key, TS: time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		return r.Stage.V
	}
	var last uint64
	for i, lose := range []func(){
		func() {},
		func() { cli(t, srv, "XTRIM", "sc:{ev}:log", "MAXLEN", "0") }, // the newest entries lost
		func() { cli(t, srv, "FLUSHALL") },                            // everything lost
		func() { cli(t, srv, "DEL", "sc:{ev}:log") },                  // the event expired
	} {
		lose()
		v := set("s")
		if v <= last {
			t.Fatalf("case %d: v%d after v%d: a version went backwards", i, v, last)
		}
		last = v
	}
	// Formatted as an integer, however large (Lua would print 1.7e+15).
	raw := cli(t, srv, "XREVRANGE", "sc:{ev}:log", "+", "-", "COUNT", "1")
	if strings.Contains(raw, "e+") || !strings.Contains(raw, `"v":`) {
		t.Fatalf("stored entry %q", raw)
	}
}

// A log whose newest entry is far above the clock (an entry from a host with a
// wrong clock, or a floor): the next version is one above it, never stuck.
func TestVersionAboveFutureEntry(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := newEngine(t, redisengine.Config{Addrs: []string{srv.Addr()}})
	cli(t, srv, "XADD", "sc:{ev}:log", "8000000000000000-0", "s", `{"event":"ev","key":"future","ts":1,"v":8000000000000000}`)
	r, err := e.SetStage(context.Background(), engine.SetRequest{Event: "ev", Key: "next", TS: 2})
	if err != nil || r.Stage.V != 8000000000000001 {
		t.Fatalf("after a future entry: %+v %v, want v8000000000000001", r, err)
	}
}

// A change that cannot be written leaves nothing behind (the one write that can
// fail comes first), and the next one works.
func TestFailedChangeWritesNothing(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := newEngine(t, redisengine.Config{Addrs: []string{srv.Addr()}})
	ctx := context.Background()
	first, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "a", TS: 1})
	if err != nil {
		t.Fatal(err)
	}
	cli(t, srv, "CONFIG", "SET", "maxmemory", "1")
	if _, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "b", TS: 2, IdempotencyKey: "kb"}); err == nil {
		t.Fatal("a change succeeded with Redis out of memory")
	}
	cli(t, srv, "CONFIG", "SET", "maxmemory", "0")
	rec, err := e.Recent(ctx, "ev", 10)
	if err != nil || len(rec) != 1 || rec[0] != first.Stage {
		t.Fatalf("after a failed change the log is %+v (%v): half written", rec, err)
	}
	if out := cli(t, srv, "EXISTS", "sc:{ev}:idem:kb"); out != "0" {
		t.Fatal("the failed change stored its idempotency reply")
	}
	r, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "b", TS: 3, IdempotencyKey: "kb"})
	if err != nil || r.Replayed || r.Stage.V <= first.Stage.V {
		t.Fatalf("the next change: %+v %v", r, err)
	}
}

// An entry that does not decode is skipped and reported; the rest of the
// history, the current stage and new changes are unaffected.
func TestCorruptLogEntry(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e := newEngine(t, redisengine.Config{Addrs: []string{srv.Addr()}})
	ctx := context.Background()
	a, _ := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "a", TS: 1})
	cli(t, srv, "XADD", "sc:{ev}:log", "*", "s", "{not json")
	rec, err := e.Recent(ctx, "ev", 10)
	var se *engine.SkippedError
	if !errors.As(err, &se) || len(se.IDs) != 1 || !engine.Usable(err) || len(rec) != 1 || rec[0] != a.Stage {
		t.Fatalf("Recent with a corrupt entry: %+v, %v", rec, err)
	}
	snap, err := e.Snapshot(ctx, "ev")
	if err != nil || snap.Current == nil || *snap.Current != a.Stage {
		t.Fatalf("Snapshot with a corrupt newest entry: %+v %v", snap.Current, err)
	}
	b, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "b", TS: 2})
	if err != nil || b.Stage.V <= a.Stage.V {
		t.Fatalf("a change after the corrupt entry: %+v %v", b, err)
	}
}

// WaitReplicas: a change is confirmed only when a replica acknowledged it; with
// none, the producer gets ErrNotDurable, and so does a retry with the same key
// until a replica has the change; then the retry replays.
func TestWaitReplicas(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	e := newEngine(t, redisengine.Config{Addrs: []string{master.Addr()}, WaitReplicas: 1, WaitTimeout: time.Second}) // generous: the machine is busy under -race
	ctx := context.Background()
	req := engine.SetRequest{Event: "ev", Key: "a", TS: 1, IdempotencyKey: "k1"}
	if _, err := e.SetStage(ctx, req); !errors.Is(err, engine.ErrNotDurable) {
		t.Fatalf("no replica: %v, want ErrNotDurable", err)
	}
	// A retry under the same key, still without a replica, is not
	// acknowledged either: a replay waits for the replicas like a write
	// (the split-brain rehearsal found it acknowledged).
	if r, err := e.SetStage(ctx, req); !errors.Is(err, engine.ErrNotDurable) {
		t.Fatalf("a retry with no replica: %+v %v, want ErrNotDurable", r, err)
	}
	// A batch of notes: each one not durable, on its own.
	notes := make([]engine.NoteWrite, 3)
	for i := range notes {
		notes[i] = engine.NoteWrite{ID: fmt.Sprintf("nw%d", i), TS: 1, Note: wire.Notification{Members: []string{fmt.Sprintf("m%d", i)},
			Type: "t", Payload: []byte(`{}`), TTL: time.Hour}}
	}
	for i, o := range e.NotifyMany(ctx, notes) {
		if !errors.Is(o.Err, engine.ErrNotDurable) {
			t.Fatalf("note %d with no replica: %+v %v, want ErrNotDurable", i, o.Res, o.Err)
		}
	}
	replica := redistest.Start(t, redistest.Options{Args: []string{"--replicaof", "127.0.0.1", master.Addr()[strings.LastIndex(master.Addr(), ":")+1:]}})
	waitfor.True(t, 20*time.Second, "the replica in sync", func() bool {
		return strings.Contains(cli(t, replica, "INFO", "replication"), "master_link_status:up")
	})
	for i, o := range e.NotifyMany(ctx, notes) { // the lane's retry: same ids
		if o.Err != nil || o.Res.Stored != 1 {
			t.Fatalf("note %d with a replica: %+v %v, want stored once", i, o.Res, o.Err)
		}
	}
	r, err := e.SetStage(ctx, req)
	if err != nil || !r.Replayed {
		t.Fatalf("retry with the same key: %+v %v, want the first change replayed", r, err)
	}
	r2, err := e.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "b", TS: 2})
	if err != nil || r2.Stage.V <= r.Stage.V {
		t.Fatalf("with a replica: %+v %v", r2, err)
	}
	if got := cli(t, replica, "XLEN", "sc:{ev}:log"); got != "2" {
		t.Fatalf("replica holds %s entries, want 2", got)
	}
}

// A failover that loses the last acknowledged change: the replica is promoted
// without the master's last write (asynchronous replication), the master dies.
// The first change on the promoted replica still gets a version above the lost
// one, so devices that received the lost change accept it.
func TestFailoverLosingTheLastChange(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{Args: []string{"--replicaof", "127.0.0.1", master.Addr()[strings.LastIndex(master.Addr(), ":")+1:]}})
	waitfor.True(t, 20*time.Second, "the replica in sync", func() bool {
		return strings.Contains(cli(t, replica, "INFO", "replication"), "master_link_status:up")
	})
	ctx := context.Background()
	onMaster := newEngine(t, redisengine.Config{Addrs: []string{master.Addr()}})
	a, err := onMaster.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "a", TS: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "change a replicated", func() bool { return cli(t, replica, "XLEN", "sc:{ev}:log") == "1" })
	cli(t, replica, "REPLICAOF", "NO", "ONE") // promoted before the next write reaches it
	lost, err := onMaster.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "lost", TS: 2})
	if err != nil {
		t.Fatal(err)
	}
	master.Kill()
	onReplica := newEngine(t, redisengine.Config{Addrs: []string{replica.Addr()}})
	next, err := onReplica.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "next", TS: 3})
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := onReplica.Recent(ctx, "ev", 10); len(rec) != 2 || rec[0] != a.Stage {
		t.Fatalf("promoted replica's log %+v: the test did not lose the change", rec)
	}
	if next.Stage.V <= lost.Stage.V {
		t.Fatalf("after the failover v%d, but devices hold the lost v%d: they would ignore it", next.Stage.V, lost.Stage.V)
	}
}
