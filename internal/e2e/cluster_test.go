package e2e

import (
	"context"
	"fmt"
	"strings"
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
	cl := redistest.StartClusterTimeout(t, 3, 1, 2*time.Second) // as production: node timeout 2 s
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
	// The producer keeps working through the failover: a change to the victim's
	// event is blocked at most 5 s in total (the broadcaster retries within its
	// budget; the producer retries a 503 with the same key), and events on other
	// shards are not held up at all.
	victim := events[0]
	master := cl.MasterFor("sc:{" + victim + "}:log")
	replica := cl.ReplicaOf(master)
	promotedAt := make(chan time.Duration, 1)
	killed := time.Now()
	master.Kill()
	go func() { // when Redis itself is done: the replica answers ROLE master
		for time.Since(killed) < 20*time.Second {
			if out, _ := replica.Cli(ctx, "ROLE"); strings.HasPrefix(out, "master") {
				promotedAt <- time.Since(killed)
				return
			}
			time.Sleep(10 * time.Millisecond) // polling Redis's state
		}
		promotedAt <- 20 * time.Second
	}()
	otherDone := make(chan time.Duration, 1)
	go func() {
		last2 := f.setRetrying(ctx, events[1], "during-failover", events[1]+"-df", 10*time.Second)
		otherDone <- time.Since(killed)
		_ = last2
	}()
	last[victim] = f.setRetrying(ctx, victim, "after-failover", victim+"-af", 20*time.Second)
	blocked := time.Since(killed)
	other := <-otherDone
	promoted := <-promotedAt
	t.Logf("master of %s killed: replica promoted by Redis after %v; the producer blocked %v in total (%v after the promotion); an event on another shard %v",
		victim, promoted.Round(time.Millisecond), blocked.Round(time.Millisecond), (blocked - promoted).Round(time.Millisecond), other.Round(time.Millisecond))
	// What stagecast adds to Redis's own failover (node timeout + election):
	// finding the new master (topology refresh 500 ms) and the retry backoff.
	if blocked-promoted > 1500*time.Millisecond {
		t.Errorf("the producer waited %v after Redis promoted the replica, want <= 1.5 s", blocked-promoted)
	}
	if other > 2*time.Second {
		t.Errorf("a stage change on another shard took %v during the failover, want it unaffected", other)
	}
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

	from := cl.MasterFor("sc:{" + ev + "}:log")
	var to *redistest.Server
	for _, n := range cl.Nodes {
		if n != from {
			to = n
			break
		}
	}
	cl.MoveSlot("sc:{"+ev+"}:log", to)
	if got := cl.MasterFor("sc:{" + ev + "}:log"); got != to {
		t.Fatalf("slot still served by %s", got.Addr())
	}
	for i := 1; i <= 3; i++ {
		r = f.setRetrying(ctx, ev, fmt.Sprintf("after-move-%d", i), fmt.Sprintf("am-%d", i), 10*time.Second)
	}
	eventually(t, 20*time.Second, "every device on the stage set after the slot moved", func() bool { return allOn(devs, ev, r.V) })
	if rec, err := newEngine(t, cl.Addrs()...).Recent(ctx, ev, 10); err != nil || len(rec) != 4 || rec[0].Key != "before-move" {
		t.Fatalf("log after the move: %+v %v, want before-move and 3 more: state did not move with the slot", rec, err)
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
		m := cl.MasterFor("sc:{" + ev + "}:log").Addr()
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
