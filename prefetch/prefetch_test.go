package prefetch_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/prefetch"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// countingStore counts reads that reach the real store.
type countingStore struct {
	prefetch.Store
	reads atomic.Int64
}

func (c *countingStore) Snapshot(ctx context.Context, event string) (engine.Snapshot, error) {
	c.reads.Add(1)
	return c.Store.Snapshot(ctx, event)
}

func redisEngine(t *testing.T, srv *redistest.Server) *redisengine.Engine {
	e, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}, OpTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func TestColdEventOneStoreRead(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	eng := redisEngine(t, srv)
	if _, err := eng.PutStageMap(context.Background(), "cold", []byte(`{"stages":{"a":{"default":1}}}`), 1); err != nil {
		t.Fatal(err)
	}
	store := &countingStore{Store: eng}
	c, err := prefetch.NewCache(prefetch.Config{Logger: quiet(), FreshFor: time.Minute}, store)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := c.Get(context.Background(), "cold")
			if err != nil || res.Map == nil || res.Keys[0] != "a" {
				failed.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if r := store.reads.Load(); r != 1 {
		t.Fatalf("%d concurrent requests for a cold event made %d store reads, want 1", n, r)
	}
}

func TestStoreDownServesStaleAndBreakerRecovers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AppendOnly: true})
	eng := redisEngine(t, srv)
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":{"good":true}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	store := &countingStore{Store: eng}
	var clock atomic.Int64 // the cache's clock, Unix ns: entries expire when the test says
	clock.Store(time.Now().UnixNano())
	c, err := prefetch.NewCache(prefetch.Config{Logger: quiet(), FreshFor: 20 * time.Millisecond, BreakerFailures: 2,
		BreakerOpenFor: 300 * time.Millisecond, StoreTimeout: 300 * time.Millisecond,
		Now: func() time.Time { return time.Unix(0, clock.Load()) }}, store)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if res, err := c.Get(ctx, "ev"); err != nil || res.Stale {
		t.Fatalf("warm: %+v %v", res, err)
	}
	srv.Kill()
	clock.Add(int64(31 * time.Millisecond)) // past the entry's jittered expiry (at most 1.5 x 20 ms)
	for i := 0; i < 20; i++ {
		res, err := c.Get(ctx, "ev")
		if err != nil || !res.Stale || res.Map == nil {
			t.Fatalf("request %d with Redis down: %+v %v, want the stale map", i, res, err)
		}
	}
	// The breaker opened: 20 requests did not make 20 store reads.
	if r := store.reads.Load(); r > 4 {
		t.Fatalf("%d store reads while Redis was down: the breaker did not open", r)
	}
	// An event never seen has nothing stale to serve: a clear error.
	if _, err := c.Get(ctx, "never-seen"); !errors.Is(err, prefetch.ErrUnavailable) {
		t.Fatalf("unknown event with Redis down: %v", err)
	}
	srv.Restart()
	waitfor.True(t, 10*time.Second, "fresh map after Redis returned", func() bool {
		res, err := c.Get(ctx, "ev")
		return err == nil && !res.Stale
	})
}

func TestMapReplacedUnderConcurrentReads(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	eng := redisEngine(t, srv)
	mapOf := func(gen int) []byte {
		var b strings.Builder
		b.WriteString(`{"stages":{`)
		for i := 0; i < 50; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"s%02d":{"default":{"gen":%d},"segments":{"x":{"gen":%d}}}`, i, gen, gen)
		}
		b.WriteString(`}}`)
		return []byte(b.String())
	}
	ctx := context.Background()
	if _, err := eng.PutStageMap(ctx, "ev", mapOf(0), 0); err != nil {
		t.Fatal(err)
	}
	c, err := prefetch.NewCache(prefetch.Config{Logger: quiet(), FreshFor: time.Millisecond}, eng)
	if err != nil {
		t.Fatal(err)
	}
	shed, _ := prefetch.NewShedder(prefetch.ShedConfig{}, nil)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.SetPathValue("event", "ev")
		prefetch.PlainHandler(c, shed)(w, r)
	}))
	defer ts.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, torn atomic.Int64
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get(ts.URL + "?segment=x")
				if err != nil {
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				gens := map[string]bool{}
				for _, part := range strings.Split(string(b), `"gen":`)[1:] {
					gens[part[:strings.IndexAny(part, "}")]] = true
				}
				reads.Add(1)
				if len(gens) != 1 {
					torn.Add(1)
				}
			}
		}()
	}
	for gen := 1; gen <= 50; gen++ {
		if _, err := eng.PutStageMap(ctx, "ev", mapOf(gen), int64(gen)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if reads.Load() < 50 || torn.Load() != 0 {
		t.Fatalf("%d reads, %d saw a mix of two maps", reads.Load(), torn.Load())
	}
}

// TestRefreshTimesSpread: 100,000 devices prefetch at the same instant; their
// refresh times (from the hints the server gives) must not bunch: no one-second
// bucket holds more than twice the uniform share over the spread's span.
func TestRefreshTimesSpread(t *testing.T) {
	c, err := prefetch.NewCache(prefetch.Config{Logger: quiet(), DefaultTTL: 300 * time.Second, Rand: rand.New(rand.NewPCG(7, 8))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100000
	e := &prefetch.Entry{Event: "ev"}
	buckets := map[int]int{}
	lo, hi := math.MaxInt, 0
	for i := 0; i < n; i++ {
		ttl, refresh := c.HintSeconds(e)
		if refresh > ttl || ttl < 150 || ttl > 450 {
			t.Fatalf("ttl %d refresh %d outside the documented ranges", ttl, refresh)
		}
		buckets[refresh]++
		lo, hi = min(lo, refresh), max(hi, refresh)
	}
	share := float64(n) / float64(hi-lo+1)
	peak := 0
	for _, k := range buckets {
		peak = max(peak, k)
	}
	if float64(peak) > 2*share {
		t.Fatalf("peak %d devices in one second, uniform share %.0f: the refresh wave bunches", peak, share)
	}
	t.Logf("refresh over [%ds, %ds]: peak %d/s, uniform share %.0f/s (%.2fx); without jitter all %d would land in one second", lo, hi, peak, share, float64(peak)/share, n)
}

func TestJitterFunctions(t *testing.T) {
	if got := prefetch.JitteredTTL(100*time.Second, 0.5, 0); got != 50*time.Second {
		t.Fatalf("u=0: %v", got)
	}
	if got := prefetch.JitteredTTL(100*time.Second, 0.5, 0.5); got != 100*time.Second {
		t.Fatalf("u=0.5: %v", got)
	}
	if got := prefetch.JitteredTTL(100*time.Second, 0.5, 0.999999); got < 149*time.Second || got >= 150*time.Second {
		t.Fatalf("u->1: %v", got)
	}
	if got := prefetch.RefreshAfter(100*time.Second, 0.5, 0.9, 0.5); got != 70*time.Second {
		t.Fatalf("refresh: %v", got)
	}
}

func TestShedder(t *testing.T) {
	now := time.Unix(0, 0)
	s, err := prefetch.NewShedder(prefetch.ShedConfig{MaxInFlight: 4, NormalInFlight: 2, LatencyBudget: 100 * time.Millisecond,
		Now: func() time.Time { return now }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dones []func()
	for i := 0; i < 2; i++ {
		d, ok, _ := s.Admit(prefetch.Normal)
		if !ok {
			t.Fatalf("normal %d shed below the limit", i)
		}
		dones = append(dones, d)
	}
	if _, ok, reason := s.Admit(prefetch.Normal); ok || reason != "inflight" {
		t.Fatal("normal admitted above NormalInFlight")
	}
	for i := 0; i < 2; i++ {
		d, ok, _ := s.Admit(prefetch.Critical)
		if !ok {
			t.Fatal("critical shed below MaxInFlight while normal is shed")
		}
		dones = append(dones, d)
	}
	if _, ok, _ := s.Admit(prefetch.Critical); ok {
		t.Fatal("critical admitted above MaxInFlight")
	}
	now = now.Add(2 * time.Second) // every request in flight took 2s: latency far over budget
	for _, d := range dones {
		d()
	}
	if _, ok, reason := s.Admit(prefetch.Normal); ok || reason != "latency" {
		t.Fatalf("normal admitted while latency is over budget (reason %q)", reason)
	}
	if d, ok, _ := s.Admit(prefetch.Critical); !ok {
		t.Fatal("critical shed for latency")
	} else {
		d()
	}
	if _, err := prefetch.NewShedder(prefetch.ShedConfig{MaxInFlight: 2, NormalInFlight: 5}, nil); err == nil {
		t.Fatal("NormalInFlight > MaxInFlight accepted")
	}
}

func TestRequestPriority(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if prefetch.RequestPriority(r, nil, &prefetch.Entry{}) != prefetch.Normal {
		t.Fatal("plain request is not normal")
	}
	if prefetch.RequestPriority(r, &prefetch.Entry{Live: true}) != prefetch.Critical {
		t.Fatal("event in its live window is not critical")
	}
	// The header is believed only through Identify, from a trusted network or a
	// request with a valid device token.
	r.Header.Set(prefetch.PriorityHeader, "critical")
	if prefetch.RequestPriority(r) != prefetch.Normal {
		t.Fatal("header believed without Identify")
	}
	prio := func(ic prefetch.IdentityConfig, r *http.Request) (p prefetch.Priority, status int) {
		w := httptest.NewRecorder()
		ic.Identify(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { p = prefetch.RequestPriority(r) })).ServeHTTP(w, r)
		return p, w.Code
	}
	r.RemoteAddr = "203.0.113.7:5555"
	if p, _ := prio(prefetch.IdentityConfig{}, r); p != prefetch.Normal {
		t.Fatal("header believed from an anonymous client")
	}
	if p, _ := prio(prefetch.IdentityConfig{TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}, r); p != prefetch.Critical {
		t.Fatal("header not believed from a trusted network")
	}
	signer, ver, _ := devicetoken.NewTestPair("k")
	tok, _ := signer.Mint(devicetoken.Claims{Device: "d1"}, time.Hour)
	r.Header.Set("Authorization", "Bearer "+tok)
	if p, code := prio(prefetch.IdentityConfig{Tokens: ver}, r); p != prefetch.Critical || code != 200 {
		t.Fatalf("header from a device with a valid token: priority %v, status %d", p, code)
	}
	r.Header.Set("Authorization", "Bearer "+tok[:len(tok)-4]+"AAAA")
	if _, code := prio(prefetch.IdentityConfig{Tokens: ver}, r); code != http.StatusUnauthorized {
		t.Fatalf("forged token: status %d, want 401", code)
	}
	r.Header.Del("Authorization")
	if _, code := prio(prefetch.IdentityConfig{Tokens: ver, Require: true}, r); code != http.StatusUnauthorized {
		t.Fatalf("no token where one is required: status %d, want 401", code)
	}
}

// Unknown events are cached too (briefly), so a device fleet asking for a
// wrong id does not reach the store on every request.
func TestNotFoundIsCached(t *testing.T) {
	store := &countingStore{Store: memengine.New(memengine.Config{})}
	c, err := prefetch.NewCache(prefetch.Config{Logger: quiet(), NotFoundFor: time.Minute}, store)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := c.Get(context.Background(), "no-such-event"); !errors.Is(err, prefetch.ErrNotFound) {
			t.Fatalf("err = %v", err)
		}
	}
	if n := store.reads.Load(); n != 1 {
		t.Fatalf("100 lookups of an unknown event made %d store reads, want 1", n)
	}
}

// The shedder's level, which proxies pace paced broadcasts by: 1 while normal
// work was shed in the last 2 s (or half the normal budget is in flight), 2
// while critical work was, back to 0 after.
func TestShedderLevel(t *testing.T) {
	now := time.Unix(1000, 0)
	s, err := prefetch.NewShedder(prefetch.ShedConfig{MaxInFlight: 4, NormalInFlight: 2, Now: func() time.Time { return now }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := s.Level(); l != 0 {
		t.Fatalf("idle level %d", l)
	}
	d1, _, _ := s.Admit(prefetch.Critical) // 1 of 2 normal slots: half the budget
	if l := s.Level(); l != 1 {
		t.Fatalf("half the normal budget in flight: level %d, want 1", l)
	}
	d2, _, _ := s.Admit(prefetch.Critical)
	if _, ok, _ := s.Admit(prefetch.Normal); ok {
		t.Fatal("normal admitted past its budget")
	}
	d3, _, _ := s.Admit(prefetch.Critical)
	d4, _, _ := s.Admit(prefetch.Critical)
	if _, ok, _ := s.Admit(prefetch.Critical); ok {
		t.Fatal("critical admitted past MaxInFlight")
	}
	if l := s.Level(); l != 2 {
		t.Fatalf("critical shed: level %d, want 2", l)
	}
	for _, d := range []func(){d1, d2, d3, d4} {
		d()
	}
	now = now.Add(3 * time.Second)
	if l := s.Level(); l != 0 {
		t.Fatalf("3 s after the last shed, nothing in flight: level %d, want 0", l)
	}
}
