package proxy

import (
	"context"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

// slowInbox is the memory engine with backlog reads that wait for release
// while gate is set, counting how many run at once.
type slowInbox struct {
	*memengine.Engine
	gate      atomic.Bool
	release   chan struct{}
	inFlight  atomic.Int64
	maxFlight atomic.Int64
	reads     atomic.Int64
}

func (e *slowInbox) ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error) {
	if e.gate.Load() {
		n := e.inFlight.Add(1)
		defer e.inFlight.Add(-1)
		for m := e.maxFlight.Load(); n > m && !e.maxFlight.CompareAndSwap(m, n); m = e.maxFlight.Load() {
		}
		e.reads.Add(1)
		select {
		case <-e.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return e.Engine.ReadInbox(ctx, ib, after, limit)
}

// TestResyncBounded (hardening #3): after a resubscribe of every shard, the
// inboxes of 300 tracking connections are re-read through the backlog-read
// bound (MaxResumes = 8 here), not one goroutine and one read per connection
// at once on the engine's callback; the callback returns at once; devices get
// no frame they did not ask for, and every inbox is re-read once.
func TestResyncBounded(t *testing.T) {
	eng := &slowInbox{Engine: memengine.New(memengine.Config{}), release: make(chan struct{})}
	s, err := New(Config{TrustDeviceIDs: true, MaxResumes: 8, MaxConnsPerIP: 1000, IPAdmitRate: 1000, IPAdmitBurst: 1000}, eng)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); hs.Close() })
	waitfor.True(t, 5*time.Second, "note subscriptions", s.notes.ready)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 300
	var frames atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+fmt.Sprintf("/v1/ws?device=rd%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					return
				}
				frames.Add(1)
			}
		}()
	}
	waitfor.True(t, 10*time.Second, "connections", func() bool { return s.Connections() == n })
	waitfor.True(t, 10*time.Second, "registrations", func() bool { return testutil.ToFloat64(s.metrics.registrations) == n })
	for i := range n { // one note each: every connection tracks its inbox
		if _, err := eng.Notify(ctx, engine.NoteWrite{ID: fmt.Sprintf("n%d", i), TS: 1, Note: wire.Notification{
			Devices: []string{fmt.Sprintf("rd%d", i)}, Type: "t", Priority: wire.PriorityNormal, Payload: []byte(`{}`), TTL: time.Hour}}); err != nil {
			t.Fatal(err)
		}
	}
	waitfor.True(t, 10*time.Second, "one note per device", func() bool { return frames.Load() == n })
	eng.gate.Store(true)
	before := runtime.NumGoroutine()
	start := time.Now()
	for k := range engine.NoteShards {
		s.notes.onSubscribed(k) // a resubscribe of every shard
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the subscription callbacks took %v: they must not do the work", d)
	}
	waitfor.True(t, 10*time.Second, "reads start", func() bool { return eng.inFlight.Load() == 8 })
	if g := runtime.NumGoroutine(); g > before+8+16 {
		t.Fatalf("goroutines %d -> %d with 8 reads in flight: resyncs must queue, not fan out", before, g)
	}
	// the rest wait in the queue (one in the dispatcher's hand, waiting for a slot)
	waitfor.True(t, 10*time.Second, "the rest queued", func() bool { return s.notes.resyncsQueued() == n-8-1 })
	if g := runtime.NumGoroutine(); g > before+8+16 {
		t.Fatalf("goroutines %d -> %d with every resync queued", before, g)
	}
	close(eng.release)
	waitfor.True(t, 20*time.Second, "every inbox re-read", func() bool { return eng.reads.Load() == n && eng.inFlight.Load() == 0 })
	if m := eng.maxFlight.Load(); m > 8 {
		t.Fatalf("%d backlog reads at once, bound 8", m)
	}
	if got := testutil.ToFloat64(s.metrics.resyncs); got != n {
		t.Fatalf("resyncs %v, want %d", got, n)
	}
	if f := frames.Load(); f != n {
		t.Fatalf("devices got %d frames after the resync, want none beyond the %d notes", f-n, n)
	}
}

// TestGapOverExpiredNoteReadsOnce: a push whose previous inbox entry expired
// before the device saw it costs one backlog read and one counted gap, and the
// push is delivered. (The held push is in the backlog it waited for, so it is
// a duplicate by then; offerNoteGap's gapCheck=false also guards the case of a
// held push the read did not return.)
func TestGapOverExpiredNoteReadsOnce(t *testing.T) {
	var clock atomic.Int64 // the engine's clock, Unix ns
	clock.Store(time.Now().UnixNano())
	eng := &slowInbox{Engine: memengine.New(memengine.Config{Now: func() time.Time { return time.Unix(0, clock.Load()) }}),
		release: make(chan struct{})}
	close(eng.release) // reads are counted, never held
	s, err := New(Config{TrustDeviceIDs: true}, eng)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); hs.Close() })
	waitfor.True(t, 5*time.Second, "note subscriptions", s.notes.ready)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/v1/ws?device=gx", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	waitfor.True(t, 5*time.Second, "registered", func() bool { return testutil.ToFloat64(s.metrics.registrations) == 1 })
	ib := engine.Inbox{Kind: wire.InboxDevice, ID: "gx"}
	send := func(id string, ttl time.Duration) {
		if _, err := eng.Notify(ctx, engine.NoteWrite{ID: id, TS: 1, Note: wire.Notification{Devices: []string{"gx"}, Type: "t",
			Priority: wire.PriorityNormal, Payload: []byte(`{}`), TTL: ttl}}); err != nil {
			t.Fatal(err)
		}
	}
	send("first", time.Hour) // the device tracks its inbox from here
	if _, _, err := ws.Read(ctx); err != nil {
		t.Fatal(err)
	}
	// A note the device never gets (no registration while it is stored), that expires.
	if err := eng.Register(ctx, s.cfg.ID, nil, []engine.Inbox{ib}); err != nil {
		t.Fatal(err)
	}
	send("gone", time.Second)
	if err := eng.Register(ctx, s.cfg.ID, []engine.Inbox{ib}, nil); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(2 * time.Second)) // "gone" expired
	eng.gate.Store(true)
	send("next", time.Hour)
	_, b, err := ws.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"nid":"next"`) {
		t.Fatalf("after the gap: %s %v", b, err)
	}
	if g := testutil.ToFloat64(s.metrics.noteGaps); g != 1 {
		t.Fatalf("gaps %v, want 1", g)
	}
	if r := eng.reads.Load(); r != 1 {
		t.Fatalf("%d backlog reads for one gap over an expired note, want 1", r)
	}
}
