package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/proxy"
)

// TestRedisCluster: the Redis engine unchanged on a real Redis Cluster (3 masters,
// 3 replicas): events on different shards fan out and catch up; a master is
// killed, its replica is promoted, and every device ends on the latest stage.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	clusterEngine := func() *redisengine.Engine {
		e, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs(), ResubscribeMax: 500 * time.Millisecond, OpTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	}
	bs, err := broadcaster.New(broadcaster.Config{Token: token, BreakerFailures: 3, BreakerOpenFor: 300 * time.Millisecond}, clusterEngine())
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, bc: &broadcaster.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}}
	for i := 0; i < 3; i++ {
		p, err := proxy.New(proxy.Config{ID: fmt.Sprintf("proxy-%d", i), ReportInterval: 100 * time.Millisecond, ReconcileInterval: time.Hour}, clusterEngine())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		f.proxies = append(f.proxies, p)
		f.urls = append(f.urls, "ws://"+serveHTTP(t, p.Handler())+"/v1/ws")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Three events whose {event} hash tags land on three different masters.
	events := pickEventsOnDistinctMasters(t, cl, 3)
	devs := map[string][]*dev{}
	for _, ev := range events {
		devs[ev] = f.startDevices(ctx, 100, ev, -1)
	}
	eventually(t, 30*time.Second, "devices connected", func() bool { return f.connections() == 300 })
	last := map[string]broadcaster.StageReply{}
	for round := 1; round <= 3; round++ {
		for _, ev := range events {
			last[ev] = f.setRetrying(ctx, ev, fmt.Sprintf("round-%d", round), fmt.Sprintf("%s-r%d", ev, round), 10*time.Second)
		}
	}
	for _, ev := range events {
		eventually(t, 10*time.Second, "every device on the last round of "+ev, func() bool { return allOn(devs[ev], ev, last[ev].V) })
	}

	// Kill the master that owns the first event; its replica takes over.
	victim := events[0]
	master := cl.MasterFor("sc:{" + victim + "}:cur")
	master.Kill()
	cl.WaitOK(30 * time.Second)
	for _, ev := range events {
		last[ev] = f.setRetrying(ctx, ev, "after-failover", ev+"-af", 20*time.Second)
	}
	for _, ev := range events {
		eventually(t, 20*time.Second, "every device on the post-failover stage of "+ev, func() bool { return allOn(devs[ev], ev, last[ev].V) })
	}
	// Late joiners catch up from the promoted replica's state.
	late := f.startDevices(ctx, 30, victim, -1)
	eventually(t, 20*time.Second, "late joiners caught up after failover", func() bool { return allOn(late, victim, last[victim].V) })
}

// pickEventsOnDistinctMasters finds n event ids whose keys live on n different masters.
func pickEventsOnDistinctMasters(t *testing.T, cl *redistest.Cluster, n int) []string {
	seen := map[string]bool{}
	var out []string
	for i := 0; len(out) < n && i < 1000; i++ {
		ev := fmt.Sprintf("cluster-ev-%d", i)
		m := cl.MasterFor("sc:{" + ev + "}:cur").Addr()
		if !seen[m] {
			seen[m] = true
			out = append(out, ev)
		}
	}
	if len(out) < n {
		t.Fatalf("found events on %d masters, want %d", len(out), n)
	}
	return out
}
