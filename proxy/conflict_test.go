package proxy_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// scriptedEngine lets a test publish any message and decide what the log says.
type scriptedEngine struct {
	*memengine.Engine // notifications (unused here)
	mu                sync.Mutex
	log               []wire.Stage
	onStage           func(wire.Stage)
}

func (e *scriptedEngine) Recent(context.Context, string, int) ([]wire.Stage, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wire.Stage(nil), e.log...), nil
}

func (e *scriptedEngine) Subscribe(ctx context.Context, _ string, onStage func(wire.Stage), onSubscribed func()) error {
	e.mu.Lock()
	e.onStage = onStage
	e.mu.Unlock()
	onSubscribed()
	<-ctx.Done()
	return ctx.Err()
}

func (e *scriptedEngine) publish(s wire.Stage) {
	e.mu.Lock()
	f := e.onStage
	e.mu.Unlock()
	f(s)
}

func (e *scriptedEngine) PutDelivery(context.Context, engine.DeliveryReport) error { return nil }
func (e *scriptedEngine) Exists(context.Context, string) (bool, error)             { return true, nil }

// One version arriving with two stages is a conflict: counted, the log re-read,
// and the log's stage is what later subscribers catch up on.
func TestVersionConflictTheLogWins(t *testing.T) {
	eng := &scriptedEngine{Engine: memengine.New(memengine.Config{}), log: []wire.Stage{{Event: "ev", Key: "a", V: 5, TS: 1}}}
	p, url := startProxy(t, eng, proxy.Config{})
	d := dial(t, url)
	d.send(`{"op":"sub","events":{"ev":0}}`)
	if f := d.expect(wire.OpStage); f.Key != "a" || f.V != 5 {
		t.Fatalf("catch-up %+v", f)
	}
	// The log now says v5 is "b" (a store that lost and rewrote history), and a
	// live message says so too.
	eng.mu.Lock()
	eng.log = []wire.Stage{{Event: "ev", Key: "b", V: 5, TS: 2}}
	eng.mu.Unlock()
	eng.publish(wire.Stage{Event: "ev", Key: "b", V: 5, TS: 2})
	eventually(t, 5*time.Second, "the conflict counted", func() bool {
		return testutil.ToFloat64(metric(t, p, "stagecast_proxy_version_conflicts_total")) >= 1
	})
	late := dial(t, url)
	eventually(t, 5*time.Second, "a late device catches up on the log's stage", func() bool {
		late.send(`{"op":"unsub","events":["ev"]}`)
		late.send(`{"op":"sub","events":{"ev":0}}`)
		for {
			f, err := late.next()
			if err != nil {
				return false
			}
			if f.Op == wire.OpStage {
				return f.Key == "b"
			}
		}
	})
}
