package device_test

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// fakeClock is the prefetch server's injected clock.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func prefetchServer(t *testing.T) (*memengine.Engine, string, *fakeClock) {
	clock := &fakeClock{}
	clock.ns.Store(time.Unix(1000, 0).UnixNano())
	eng := memengine.New(memengine.Config{})
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":"A","segments":{"s1":"A1"}},"b":{"default":"B"}},"ttl_seconds":100}`), 1); err != nil {
		t.Fatal(err)
	}
	s, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Now: clock.now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return eng, ts.URL + "/graphql", clock
}

func TestPrefetcherHonoursRefreshHint(t *testing.T) {
	_, url, _ := prefetchServer(t)
	var mu sync.Mutex
	var sleeps []time.Duration
	stop := errStopPrefetch{}
	p, err := device.NewPrefetcher(device.PrefetchConfig{URL: url, Event: "ev", Segment: "s1",
		Sleep: func(_ context.Context, d time.Duration) error {
			mu.Lock()
			defer mu.Unlock()
			sleeps = append(sleeps, d)
			if len(sleeps) == 3 {
				return stop
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); err != stop {
		t.Fatalf("Run = %v", err)
	}
	if p.Fetches.Load() != 3 {
		t.Fatalf("%d fetches", p.Fetches.Load())
	}
	for _, d := range sleeps {
		// ttl in [50s, 150s], refresh in [0.5, 0.9] x ttl.
		if d < 24*time.Second || d > 136*time.Second {
			t.Fatalf("slept %v: not the server's refresh hint", d)
		}
	}
	if v, ok := p.Lookup("a"); !ok || string(v) != `"A1"` {
		t.Fatalf("segment payload: %s %v", v, ok)
	}
}

func TestPrefetcherMissFetchesOnceAfterJitter(t *testing.T) {
	eng, url, clock := prefetchServer(t)
	var delays []time.Duration
	var mu sync.Mutex
	release := make(chan struct{})
	p, err := device.NewPrefetcher(device.PrefetchConfig{URL: url, Event: "ev", MissDelayMax: 5 * time.Second,
		Rand: rand.New(rand.NewPCG(1, 1)),
		Sleep: func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			delays = append(delays, d)
			mu.Unlock()
			<-release
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, ok := p.OnStage(context.Background(), "b"); !ok || string(v) != `"B"` {
		t.Fatal("a held key was not served locally")
	}
	// The producer adds a stage after devices prefetched; a broadcast names it.
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":"A"},"c":{"default":"C"}}}`), 2); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Minute) // the server's cached snapshot is no longer fresh
	for i := 0; i < 5; i++ {
		if _, ok := p.OnStage(context.Background(), "c"); ok {
			t.Fatal("missing key reported as held")
		}
	}
	close(release)
	waitfor.True(t, 5*time.Second, "the missing key fetched", func() bool { _, ok := p.Lookup("c"); return ok })
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != 1 || delays[0] < 0 || delays[0] >= 5*time.Second {
		t.Fatalf("miss fetch delays %v: want exactly one, in [0, 5s)", delays)
	}
	if n := p.Fetches.Load(); n != 2 {
		t.Fatalf("%d fetches: five misses must make one", n)
	}
}

func TestPrefetcherBacksOffOnShed(t *testing.T) {
	var calls atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(503)
	}))
	defer ts.Close()
	var sleeps []time.Duration
	stop := errStopPrefetch{}
	p, _ := device.NewPrefetcher(device.PrefetchConfig{URL: ts.URL, Event: "ev", BackoffBase: time.Second, BackoffCap: 4 * time.Second,
		Sleep: func(_ context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			if len(sleeps) == 4 {
				return stop
			}
			return nil
		}})
	if err := p.Run(context.Background()); err != stop {
		t.Fatal(err)
	}
	for _, d := range sleeps {
		if d < 7*time.Second {
			t.Fatalf("slept %v, less than the server's Retry-After of 7s", d)
		}
	}
}

type errStopPrefetch struct{}

func (errStopPrefetch) Error() string { return "stop" }

// A device whose token is refused stops instead of retrying for ever.
func TestRunStopsWhenUnauthorized(t *testing.T) {
	_, ver, err := devicetoken.NewTestPair("k")
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Tokens: ver, RequireToken: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ts := httptest.NewServer(p.Handler())
	defer ts.Close()
	c, _ := device.New(device.Config{URLs: []string{"ws" + ts.URL[len("http"):] + "/v1/ws"}, Token: "bad",
		Sleep: func(context.Context, time.Duration) error { t.Error("retried after 401"); return context.Canceled }})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Run(ctx); err == nil || !strings.Contains(err.Error(), "credentials rejected") {
		t.Fatalf("Run = %v, want credentials rejected", err)
	}
}

// A connection that was established and then lost starts the backoff afresh:
// every reconnect after a drop waits within the first window, U(0, base),
// however many drops came before (failed dials, by contrast, escalate).
func TestBackoffResetsAfterAnEstablishedConnection(t *testing.T) {
	p, err := proxy.New(proxy.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ts := httptest.NewServer(p.Handler())
	defer ts.Close()
	var sleeps []time.Duration
	var c *device.Client
	c, err = device.New(device.Config{URLs: []string{"ws" + ts.URL[len("http"):] + "/v1/ws"},
		BackoffBase: 100 * time.Millisecond, BackoffCap: 10 * time.Second, Rand: rand.New(rand.NewPCG(1, 2)),
		OnConnect: func() { go c.Drop() }, // each connection is lost right after it is made
		Sleep: func(_ context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			if len(sleeps) == 8 {
				return context.Canceled
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = c.Run(ctx)
	if len(sleeps) != 8 {
		t.Fatalf("%d reconnects, want 8", len(sleeps))
	}
	for i, d := range sleeps {
		if d >= 100*time.Millisecond {
			t.Fatalf("reconnect %d after a drop waited %v: the backoff did not start afresh (%v)", i, d, sleeps)
		}
	}
}

// A stage frame whose digest differs from the payload held makes the device
// refetch once, in its own hashed slot (not at random); a matching digest
// makes nothing; the digest the engine puts on a stage change is the one the
// prefetch API returned for that key.
func TestPrefetcherDigestRefetchInSlot(t *testing.T) {
	eng, url, clock := prefetchServer(t)
	var mu sync.Mutex
	var delays []time.Duration
	p, err := device.NewPrefetcher(device.PrefetchConfig{URL: url, Event: "ev", DeviceID: "tv-42", RefetchWindow: 30 * time.Second, RefetchSlots: 300,
		Sleep: func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			delays = append(delays, d)
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	held := p.Digest("a")
	r, err := eng.SetStage(context.Background(), engine.SetRequest{Event: "ev", Key: "a", TS: 1})
	if err != nil || r.Stage.Digest != held || held == "" {
		t.Fatalf("stage digest %q, prefetched %q (%v)", r.Stage.Digest, held, err)
	}
	if _, ok, refetch := p.OnStageDigest(context.Background(), "a", r.Stage.Digest); !ok || refetch != -1 {
		t.Fatalf("a current payload: ok=%v refetch=%v", ok, refetch)
	}
	// The producer changes a's payload after devices prefetched.
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":"A-new"},"b":{"default":"B"}}}`), 2); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Minute)
	r, _ = eng.SetStage(context.Background(), engine.SetRequest{Event: "ev", Key: "a", TS: 2})
	v, ok, refetch := p.OnStageDigest(context.Background(), "a", r.Stage.Digest)
	want := wire.RefetchDelay("tv-42", 30*time.Second, 300)
	if !ok || string(v) != `"A"` || refetch != want {
		t.Fatalf("stale payload: %s ok=%v refetch %v, want the old payload shown and refetch at %v", v, ok, refetch, want)
	}
	waitfor.True(t, 5*time.Second, "the refetch landed", func() bool { return p.Digest("a") == r.Stage.Digest })
	if got, _ := p.Lookup("a"); string(got) != `"A-new"` {
		t.Fatalf("after the refetch a = %s", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != 1 || delays[0] != want {
		t.Fatalf("refetch sleeps %v, want one of %v", delays, want)
	}
}
