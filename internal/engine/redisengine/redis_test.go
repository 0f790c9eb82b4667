package redisengine_test

import (
	"context"
	"testing"

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
