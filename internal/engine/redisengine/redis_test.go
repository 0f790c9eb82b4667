package redisengine_test

import (
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
