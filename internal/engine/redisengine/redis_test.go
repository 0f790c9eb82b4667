package redisengine_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/enginetest"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
)

func TestRedisConformance(t *testing.T) {
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine {
		srv := redistest.Start(t, redistest.Options{})
		e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, LogLen: logLen})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	})
}

// TestRedisConformanceClientCache runs the suite with client-side caching on:
// a replaced map must be seen at once (server-assisted invalidation).
func TestRedisConformanceClientCache(t *testing.T) {
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine {
		srv := redistest.Start(t, redistest.Options{})
		e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, LogLen: logLen, ClientCache: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	})
}

// TestRedisClusterConformance runs the suite on a real 3-master Redis Cluster
// (sharded pub/sub, scripts on hash-tagged keys, multi-slot pipelines).
func TestRedisClusterConformance(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine {
		for _, n := range cl.Nodes {
			if out, err := n.Cli(context.Background(), "FLUSHALL"); err != nil {
				t.Fatalf("flushall: %v %s", err, out)
			}
		}
		e, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs(), LogLen: logLen})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	})
}

// An event's state expires EventTTL after its last change; nothing is kept for ever.
func TestEventKeysExpire(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, EventTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.SetStage(context.Background(), engine.SetRequest{Event: "ev", Key: "a", TS: 1, IdempotencyKey: "k"}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"sc:{ev}:log", "sc:{ev}:idem:k"} {
		out, err := srv.Cli(context.Background(), "PTTL", k)
		ms, _ := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || ms <= 0 || ms > int(25*time.Hour/time.Millisecond) {
			t.Errorf("%s PTTL = %q (%v): want a bounded lifetime", k, out, err)
		}
	}
}

func TestRedisNotes(t *testing.T) {
	enginetest.RunNotes(t, func(t *testing.T) enginetest.NoteEngine {
		srv := redistest.Start(t, redistest.Options{})
		e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	})
}

// TestRedisClusterNotes: inboxes, registry and push channels on a 3-master
// Cluster (each inbox's script and channel on its own shard's slot).
func TestRedisClusterNotes(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	enginetest.RunNotes(t, func(t *testing.T) enginetest.NoteEngine {
		for _, n := range cl.Nodes {
			if out, err := n.Cli(context.Background(), "FLUSHALL"); err != nil {
				t.Fatalf("flushall: %v %s", err, out)
			}
		}
		e, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	})
}

// TestReadInboxBoundedCalls (hardening #4): a page of 1 over 150 expired notes
// costs at most 2 Redis calls, not one per expired note.
func TestReadInboxBoundedCalls(t *testing.T) {
	srv, e := startEngine(t)
	ctx := context.Background()
	send := func(id string, ttl time.Duration) {
		if _, err := e.Notify(ctx, engine.NoteWrite{ID: id, TS: 1, Note: wire.Notification{Members: []string{"x"}, Type: "t",
			Priority: wire.PriorityNormal, Payload: []byte(`{}`), TTL: ttl}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 150 {
		send("nexp"+strconv.Itoa(i), time.Millisecond)
	}
	send("nlive", time.Hour)
	ib := engine.Inbox{Kind: wire.InboxMember, ID: "x"}
	calls := func() int {
		out, err := srv.Cli(ctx, "INFO", "commandstats")
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(out, "cmdstat_xrange:calls=")
		if !ok {
			return 0
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		before := calls()
		got, err := e.ReadInbox(ctx, ib, wire.Pos{}, 1)
		if err != nil {
			t.Fatal(err)
		}
		n := calls() - before
		if n > 2 {
			t.Fatalf("ReadInbox(limit 1) made %d XRANGE calls, bound 2", n)
		}
		if len(got) == 1 && strings.Contains(string(got[0].Body), "nlive") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live note was not read: %d notes", len(got))
		}
	}
}

// TestKeyTTL (hardening #11): a key made up for a keyless request is kept for
// its own short TTL, not the 24 h of a producer's key.
func TestKeyTTL(t *testing.T) {
	srv, e := startEngine(t)
	ctx := context.Background()
	for _, tc := range []struct {
		key      string
		ttl      time.Duration
		min, max int
	}{{"auto-1", 10 * time.Minute, 590, 600}, {"producer-1", 0, 86390, 86400}} {
		if _, err := e.SetStage(ctx, engine.SetRequest{Event: "kt", Key: "s", TS: 1, IdempotencyKey: tc.key, KeyTTL: tc.ttl}); err != nil {
			t.Fatal(err)
		}
		out, err := srv.Cli(ctx, "TTL", "sc:{kt}:idem:"+tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(out)); n < tc.min || n > tc.max {
			t.Fatalf("key %s: TTL %s s, want %d-%d", tc.key, strings.TrimSpace(out), tc.min, tc.max)
		}
	}
}

// TestRedisLayoutDocumented (hardening #14): every key the engine writes while
// both conformance suites run matches a row of the Redis layout table in
// docs/architecture.md.
func TestRedisLayoutDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []*regexp.Regexp
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| `sc:") {
			continue
		}
		k := strings.Trim(strings.Split(line, "|")[1], " `")
		re := regexp.QuoteMeta(k)
		for _, ph := range []string{`\{E\}`, `<key>`, `<v>`, `<k>`, `<I>`, `<proxy>`, `<nid>`, `<producer>`} {
			re = strings.ReplaceAll(re, regexp.QuoteMeta(ph), `.+`)
			re = strings.ReplaceAll(re, ph, `.+`)
		}
		patterns = append(patterns, regexp.MustCompile("^"+re+"$"))
	}
	if len(patterns) < 10 {
		t.Fatalf("found %d rows in the layout table", len(patterns))
	}
	srv := redistest.Start(t, redistest.Options{})
	newEngine := func(t *testing.T, logLen int) *redisengine.Engine {
		if out, err := srv.Cli(context.Background(), "FLUSHALL"); err != nil {
			t.Fatalf("flushall: %v %s", err, out)
		}
		e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, LogLen: logLen})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close(); checkKeys(t, srv, patterns) })
		return e
	}
	enginetest.Run(t, func(t *testing.T, logLen int) enginetest.Engine { return newEngine(t, logLen) })
	enginetest.RunNotes(t, func(t *testing.T) enginetest.NoteEngine { return newEngine(t, 0) })
}

func checkKeys(t *testing.T, srv *redistest.Server, patterns []*regexp.Regexp) {
	out, err := srv.Cli(context.Background(), "--scan")
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	for _, k := range strings.Fields(out) {
		ok := false
		for _, p := range patterns {
			if p.MatchString(k) {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("key %q is written by the engine but not in docs/architecture.md's Redis layout", k)
		}
	}
}

// startEngine starts a throw-away redis-server and an engine on it.
func startEngine(t testing.TB) (*redistest.Server, *redisengine.Engine) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return srv, e
}

// TestStageChangeNeverWaitsForTheEventIndex (hardening #8): the events index
// (sc:events, one key on one shard) is written off the stage-change path, so
// with that shard's writes paused for 3 s a change to an event on another
// shard is not held up, and the index catches up once the shard is back.
func TestStageChangeNeverWaitsForTheEventIndex(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	e, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	index := cl.MasterFor("sc:events")
	event := ""
	for i := 0; i < 1000 && event == ""; i++ {
		if ev := fmt.Sprintf("ix-%d", i); cl.MasterFor("sc:{"+ev+"}:log") != index {
			event = ev
		}
	}
	ctx := context.Background()
	if _, err := e.SetStage(ctx, engine.SetRequest{Event: event, Key: "warm", TS: 1}); err != nil {
		t.Fatal(err)
	}
	if out, err := index.Cli(ctx, "CLIENT", "PAUSE", "3000", "WRITE"); err != nil {
		t.Fatalf("client pause: %v %s", err, out)
	}
	start := time.Now()
	if _, err := e.SetStage(ctx, engine.SetRequest{Event: event, Key: "live", TS: 2}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("a stage change took %v while only the index's shard was paused (3 s)", took)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := e.Events(ctx, 10)
		if err == nil && len(evs) == 1 && evs[0].Event == event && evs[0].Current != nil && evs[0].Current.Key == "live" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the index never caught up: %+v %v", evs, err)
		}
		time.Sleep(50 * time.Millisecond) // polling Redis
	}
}
