package redisengine_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/netfault"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
)

// TestSilentPartition (issue 24): an engine whose way to Redis drops every
// packet (no reset) notices within its ConnTimeout: commands fail instead of
// hanging past their timeout, and the subscription ends. After the heal it
// subscribes again by itself (onSubscribed, so the caller re-reads what it
// missed) within a few seconds, and a change made by another client during
// the partition is in the history it re-reads.
func TestSilentPartition(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	links := netfault.New()
	t.Cleanup(links.Close)
	link, err := links.Add("engine->redis", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	// The engine is told about srv and dials it through the link (AddrMap).
	e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, AddrMap: map[string]string{srv.Addr(): link.Listen},
		ConnTimeout: time.Second, ResubscribeMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	other, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var subscribed atomic.Int32
	got := make(chan wire.Stage, 16)
	go func() {
		_ = e.Subscribe(ctx, "night", func(s wire.Stage) { got <- s }, func() { subscribed.Add(1) })
	}()
	waitUntil(t, 5*time.Second, "the first subscription", func() bool { return subscribed.Load() == 1 })
	if _, err := other.SetStage(ctx, engine.SetRequest{Event: "night", Key: "round-1", TS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s.Key != "round-1" {
			t.Fatalf("got %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no stage through the healthy link")
	}

	if err := link.Apply(netfault.Fault{Kind: netfault.Partition}); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	// A command fails within its own timeout; it never hangs on the dead link.
	cctx, ccancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err = e.Recent(cctx, "night", 10)
	ccancel()
	if err == nil {
		t.Fatal("a read through a partitioned link succeeded")
	}
	if took := time.Since(cut); took > 3*time.Second {
		t.Fatalf("the read took %v to fail", took)
	}
	if _, err := other.SetStage(ctx, engine.SetRequest{Event: "night", Key: "round-2", TS: 2}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("%+v crossed a partitioned link", s)
	case <-time.After(2 * time.Second):
	}
	link.Heal()
	healed := time.Now()
	waitUntil(t, 6*time.Second, "the subscription after the heal", func() bool { return subscribed.Load() >= 2 })
	t.Logf("subscribed again %v after the heal", time.Since(healed).Round(time.Millisecond))
	hist, err := e.Recent(ctx, "night", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) == 0 || hist[len(hist)-1].Key != "round-2" {
		t.Fatalf("history after the heal %+v: want round-2, made during the partition, last", hist)
	}
}

// TestPartitionFromOneShard: an engine cut from one master of a Redis
// Cluster fails fast on that shard's events and keeps serving the others;
// after the heal the cut events work again.
func TestPartitionFromOneShard(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	links := netfault.New()
	t.Cleanup(links.Close)
	amap := map[string]string{}
	byAddr := map[string]*netfault.Link{}
	for _, a := range cl.Addrs() {
		l, err := links.Add("engine->"+a, a)
		if err != nil {
			t.Fatal(err)
		}
		amap[a], byAddr[a] = l.Listen, l
	}
	e, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs(), AddrMap: amap, ConnTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx := context.Background()
	// Two events on different masters.
	cutEvent, okEvent := "", ""
	cutMaster := cl.MasterFor("sc:{ev-0}:stage")
	for i := 1; i < 200 && okEvent == ""; i++ {
		ev := "ev-" + strconv.Itoa(i)
		if cl.MasterFor("sc:{"+ev+"}:stage") != cutMaster {
			okEvent = ev
		}
	}
	cutEvent = "ev-0"
	for _, ev := range []string{cutEvent, okEvent} {
		if _, err := e.SetStage(ctx, engine.SetRequest{Event: ev, Key: "before", TS: 1}); err != nil {
			t.Fatalf("%s: %v", ev, err)
		}
	}
	if err := byAddr[cutMaster.Addr()].Apply(netfault.Fault{Kind: netfault.Partition}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		_, err := e.SetStage(sctx, engine.SetRequest{Event: okEvent, Key: "during-" + strconv.Itoa(i), TS: int64(2 + i)})
		cancel()
		if err != nil {
			t.Fatalf("an event on another shard failed during the partition: %v", err)
		}
		sctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		cutStart := time.Now()
		_, err = e.SetStage(sctx, engine.SetRequest{Event: cutEvent, Key: "during-" + strconv.Itoa(i), TS: int64(2 + i)})
		cancel()
		t.Logf("the cut shard's change failed after %v: %v", time.Since(cutStart).Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("a change on the cut shard was acknowledged")
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("the two changes took %v", took)
		}
	}
	byAddr[cutMaster.Addr()].Heal()
	waitUntil(t, 10*time.Second, "a change on the healed shard", func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := e.SetStage(sctx, engine.SetRequest{Event: cutEvent, Key: "after", TS: 10, IdempotencyKey: "after-heal"})
		return err == nil
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
