package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// TestStressNoDeadlock runs, at once and for a bounded time: stage changes on
// four events, devices subscribing, unsubscribing and acking at random, devices
// dropping their TCP connection mid-fanout (failed writes) and reconnecting, and
// a few that never read (slow consumers). Afterwards the proxy must still serve:
// a new device gets the latest stage of every event, and the connection count
// falls to the devices still open. Run under -race (make test does); a deadlock
// shows as the final checks timing out.
func TestStressNoDeadlock(t *testing.T) {
	eng := memEngine(t)
	events := []string{"fight", "ev", "a", "b"}
	p, url := startProxy(t, eng, proxy.Config{WriteTimeout: 300 * time.Millisecond, MaxFramesPerSecond: 1000,
		SubscribeBudget: 100000, ErrorBudget: 100000, Writers: 2, MaxWriters: 16,
		IPLimitExempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	const devices, runFor = 40, 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), runFor)
	defer cancel()
	var ops atomic.Int64
	var wg sync.WaitGroup

	// The producer: a change every 2 ms on a random event.
	last := map[string]uint64{}
	var lastMu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			ev := events[i%len(events)]
			s := set(t, eng, ev, fmt.Sprintf("k%d", i), nil)
			lastMu.Lock()
			last[ev] = s.V
			lastMu.Unlock()
			time.Sleep(2 * time.Millisecond) // pacing, not a wait
		}
	}()
	// Devices.
	for d := 0; d < devices; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(d), 7))
			for ctx.Err() == nil {
				ws, _, err := websocket.Dial(ctx, url, nil)
				if err != nil {
					continue
				}
				held := map[string]uint64{}
				var hmu sync.Mutex
				if d%10 != 0 { // every tenth device never reads
					go func() {
						for {
							_, b, err := ws.Read(ctx)
							if err != nil {
								return
							}
							if f, err := wire.ParseProxyFrame(b); err == nil && f.Op == wire.OpStage {
								hmu.Lock()
								held[f.Event] = max(held[f.Event], f.V)
								hmu.Unlock()
							}
						}
					}()
				}
				for n := 0; n < 50 && ctx.Err() == nil; n++ {
					ev := events[rnd.IntN(len(events))]
					var frame string
					switch rnd.IntN(4) {
					case 0, 1:
						frame = fmt.Sprintf(`{"op":"sub","events":{%q:0}}`, ev)
					case 2:
						frame = fmt.Sprintf(`{"op":"unsub","events":[%q]}`, ev)
					case 3:
						hmu.Lock()
						v := held[ev]
						hmu.Unlock()
						frame = fmt.Sprintf(`{"op":"ack","event":%q,"v":%d}`, ev, max(v, 1))
					}
					wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
					_ = ws.Write(wctx, websocket.MessageText, []byte(frame))
					wcancel()
					ops.Add(1)
				}
				ws.CloseNow() // dropped mid-fanout: the proxy's next write to it fails
			}
		}()
	}
	wg.Wait()

	// The proxy still serves: every event's latest stage reaches a new device.
	eventually(t, 10*time.Second, "dropped devices unregistered", func() bool { return p.Connections() == 0 })
	check := dial(t, url)
	subs := map[string]uint64{}
	for _, ev := range events {
		subs[ev] = 0
	}
	check.send(string(wire.AppendSub(nil, subs)))
	got := map[string]uint64{}
	for len(got) < len(events) || !caughtUp(got, last, &lastMu) {
		f := check.expect(wire.OpStage)
		got[f.Event] = max(got[f.Event], f.V)
	}
	t.Logf("%d device operations with changes every 2 ms for %v; final check passed", ops.Load(), runFor)
}

func caughtUp(got, last map[string]uint64, mu *sync.Mutex) bool {
	mu.Lock()
	defer mu.Unlock()
	for ev, v := range last {
		if got[ev] != v {
			return false
		}
	}
	return true
}
