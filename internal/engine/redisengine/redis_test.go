package redisengine_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/enginetest"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
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
