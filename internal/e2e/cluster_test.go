package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/proxy"
)

// TestRedisCluster: the Redis engine unchanged on a real Redis Cluster (3 masters,
// 3 replicas): events on different shards fan out and catch up; a master is
// killed, its replica is promoted, and every device ends on the latest stage.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	f := startFleetOn(t, 3, cl.Addrs(), proxy.Config{})
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

// TestRedisClusterSlotMove: an event's slot migrates to another master (as a
// resharding does); Redis unsubscribes the proxies from its shard channel, they
// resubscribe on the new owner, and every device keeps receiving changes.
func TestRedisClusterSlotMove(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	f := startFleetOn(t, 3, cl.Addrs(), proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const ev = "moving-event"
	devs := f.startDevices(ctx, 150, ev, -1)
	eventually(t, 30*time.Second, "devices connected", func() bool { return f.connections() == 150 })
	r := f.setRetrying(ctx, ev, "before-move", "bm", 10*time.Second)
	eventually(t, 10*time.Second, "devices on the first stage", func() bool { return allOn(devs, ev, r.V) })

	from := cl.MasterFor("sc:{" + ev + "}:cur")
	var to *redistest.Server
	for _, n := range cl.Nodes {
		if n != from {
			to = n
			break
		}
	}
	cl.MoveSlot("sc:{"+ev+"}:cur", to)
	if got := cl.MasterFor("sc:{" + ev + "}:cur"); got != to {
		t.Fatalf("slot still served by %s", got.Addr())
	}
	for i := 1; i <= 3; i++ {
		r = f.setRetrying(ctx, ev, fmt.Sprintf("after-move-%d", i), fmt.Sprintf("am-%d", i), 10*time.Second)
	}
	eventually(t, 20*time.Second, "every device on the stage set after the slot moved", func() bool { return allOn(devs, ev, r.V) })
	if r.V != 4 {
		t.Fatalf("version after the move v%d, want v4: state did not move with the slot", r.V)
	}
	late := f.startDevices(ctx, 20, ev, -1)
	eventually(t, 20*time.Second, "late joiners caught up from the new owner", func() bool { return allOn(late, ev, r.V) })
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
