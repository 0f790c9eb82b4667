package proxy

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine/memengine"
)

// lookupCounter counts existence lookups reaching the engine.
type lookupCounter struct {
	*memengine.Engine
	n atomic.Int64
}

func (l *lookupCounter) Exists(ctx context.Context, event string) (bool, error) {
	l.n.Add(1)
	return l.Engine.Exists(ctx, event)
}

// The existence check costs at most LookupRate engine lookups a second, caches
// both answers, and never refuses an event it knows exists.
func TestEventCheckerBounds(t *testing.T) {
	eng := &lookupCounter{Engine: memengine.New(memengine.Config{})}
	if _, err := eng.PutStageMap(context.Background(), "real", []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	cfg := Config{LookupRate: 10, ExistsTTL: 30 * time.Second, MissingTTL: 5 * time.Second, Now: func() time.Time { return now }}
	ec := newEventChecker(&cfg, eng)
	ctx := context.Background()
	if got := ec.check(ctx, "real"); got != eventExists {
		t.Fatalf("real event: %v", got)
	}
	unchecked := 0
	for i := 0; i < 100; i++ {
		switch ec.check(ctx, fmt.Sprintf("made-up-%d", i)) {
		case eventUnchecked:
			unchecked++
		case eventExists:
			t.Fatal("a made-up event exists")
		}
	}
	// The token bucket holds 10 (one was spent on "real"): the rest are refused
	// without an engine round trip.
	if n := eng.n.Load(); n > 12 || unchecked < 88 { // a token or two may refill on a slow machine
		t.Fatalf("%d engine lookups, %d unchecked, for 101 distinct events at LookupRate 10", n, unchecked)
	}
	before := eng.n.Load()
	for i := 0; i < 50; i++ {
		if ec.check(ctx, "real") != eventExists || ec.check(ctx, "made-up-0") != eventMissing {
			t.Fatal("cached answers changed")
		}
	}
	if eng.n.Load() != before {
		t.Fatal("cached answers went to the engine")
	}
	// The positive answer expires but, with the lookup budget spent, the event
	// it knew about is still admitted.
	now = now.Add(time.Minute)
	for i := 0; i < 20; i++ {
		ec.check(ctx, fmt.Sprintf("other-%d", i)) // spend whatever refilled
	}
	if got := ec.check(ctx, "real"); got != eventExists {
		t.Fatalf("a known event with the budget spent: %v, want exists", got)
	}
}
