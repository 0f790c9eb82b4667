package prefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/singleflight"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Store is what the cache reads on a miss.
type Store interface {
	Snapshot(ctx context.Context, event string) (engine.Snapshot, error)
}

// Config configures the cache and the response hints. Zero values are defaults.
type Config struct {
	// CacheSize is how many events the local cache holds. Default 10000.
	CacheSize int
	// OnLookup, when set, is called for every lookup with its event and result
	// (hit, shared, miss, stale, unavailable, not_found): the analytics
	// stream's per-event counts. It must only count, never wait.
	OnLookup func(event, result string)
	// FreshFor is the base lifetime of a local cache entry, jittered
	// U(0.5, 1.5) per entry. It bounds how stale "current" can be. Default 2s.
	FreshFor time.Duration
	// MaxStale: when the store fails, an expired entry is served (marked stale)
	// for up to this long after it was loaded. Default 1h.
	MaxStale time.Duration
	// NotFoundFor is the base lifetime (jittered likewise) of "no such event". Default 2s.
	NotFoundFor time.Duration
	// DefaultTTL is the device TTL when the stage map sets none. Default 300s.
	DefaultTTL time.Duration
	// TTLJitter j: device TTL ~ T x U(1-j, 1+j). Default 0.5.
	TTLJitter float64
	// RefreshLo, RefreshHi: refreshAfter ~ ttl x U(lo, hi). Defaults 0.5, 0.9.
	RefreshLo, RefreshHi float64
	// StoreTimeout bounds one store read. Default 1s.
	StoreTimeout time.Duration
	// BreakerFailures consecutive store failures open the breaker for
	// BreakerOpenFor. Defaults 3, 2s.
	BreakerFailures uint32
	BreakerOpenFor  time.Duration
	Registerer      prometheus.Registerer
	Logger          *slog.Logger
	Now             func() time.Time
	Rand            *rand.Rand
}

// DefaultConfig returns the cache's documented defaults. NewCache fills each
// zero field of its Config from it (package defaults; RefreshLo and RefreshHi
// as a pair: both zero take the defaults), then validates.
func DefaultConfig() Config {
	return Config{
		CacheSize:       10000,
		FreshFor:        2 * time.Second,
		MaxStale:        time.Hour,
		NotFoundFor:     2 * time.Second,
		DefaultTTL:      300 * time.Second,
		TTLJitter:       0.5,
		RefreshLo:       0.5,
		RefreshHi:       0.9,
		StoreTimeout:    time.Second,
		BreakerFailures: 3,
		BreakerOpenFor:  2 * time.Second,
		Logger:          slog.Default(),
		Now:             time.Now,
	}
}

// fill is NewCache's first step.
func (c *Config) fill() {
	lo, hi := c.RefreshLo, c.RefreshHi
	defaults.Fill(c, DefaultConfig())
	if lo != 0 || hi != 0 {
		c.RefreshLo, c.RefreshHi = lo, hi
	}
	if c.Rand == nil {
		c.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing.
func (c *Config) Validate() error {
	for _, d := range []time.Duration{c.FreshFor, c.MaxStale, c.NotFoundFor, c.DefaultTTL, c.StoreTimeout, c.BreakerOpenFor} {
		if d <= 0 {
			return fmt.Errorf("prefetch config: duration %v must be > 0", d)
		}
	}
	switch {
	case c.CacheSize <= 0:
		return fmt.Errorf("prefetch config: CacheSize %d must be > 0", c.CacheSize)
	case c.BreakerFailures == 0:
		return errors.New("prefetch config: BreakerFailures must be > 0")
	case c.TTLJitter < 0 || c.TTLJitter >= 1:
		return fmt.Errorf("prefetch config: TTLJitter %v outside [0, 1)", c.TTLJitter)
	case c.RefreshLo < 0 || c.RefreshHi > 1 || c.RefreshLo > c.RefreshHi:
		return fmt.Errorf("prefetch config: refresh range [%v, %v] must lie in [0, 1]", c.RefreshLo, c.RefreshHi)
	case c.Logger == nil || c.Now == nil || c.Rand == nil:
		return errors.New("prefetch config: Logger, Now and Rand must be set (NewCache fills them)")
	}
	return nil
}

// Entry is one event's loaded snapshot. Immutable once published.
type Entry struct {
	Event string
	// Gen is unique per load: a new Gen means the data may have changed.
	Gen        uint64
	Map        *wire.StageMap    // nil: no stage map
	Keys       []string          // Map's stage keys, sorted
	Digests    map[string]string // Map's payload digest per stage key (wire.StageDigest)
	MapVersion uint64
	Current    *wire.Stage
	Live       bool
	NotFound   bool // neither a stage map nor a stage
	LoadedAt   time.Time

	freshUntil time.Time
}

// Result is an Entry as served: Stale when the store failed and an expired entry
// stands in.
type Result struct {
	*Entry
	Stale bool
}

// Errors of Get.
var (
	// ErrNotFound: the event has neither a stage map nor a stage.
	ErrNotFound = errors.New("prefetch: no such event")
	// ErrUnavailable: the store failed and no earlier copy is at hand.
	ErrUnavailable = errors.New("prefetch: store unavailable and nothing cached")
)

// Cache is the prefetch cache.
type Cache struct {
	cfg     Config
	store   Store
	lru     *lru.Cache[string, *Entry]
	sf      singleflight.Group
	breaker *gobreaker.CircuitBreaker[engine.Snapshot]
	gen     atomic.Uint64
	randMu  sync.Mutex
	m       cacheMetrics
	log     *slog.Logger
}

type cacheMetrics struct {
	lookups    *prometheus.CounterVec
	storeReads *prometheus.CounterVec
	breaker    prometheus.Gauge
}

// NewCache validates cfg and returns a cache over store.
func NewCache(cfg Config, store Store) (*Cache, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := lru.New[string, *Entry](cfg.CacheSize)
	if err != nil {
		return nil, err
	}
	c := &Cache{cfg: cfg, store: store, lru: l, log: cfg.Logger.With("component", "prefetch")}
	c.m = cacheMetrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "cache_lookups_total",
			Help: "Cache lookups by result: hit, miss (store read), shared (waited on another miss), stale (served after a store failure), not_found, unavailable."}, []string{"result"}),
		storeReads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "store_reads_total",
			Help: "Snapshot reads from the store, by result."}, []string{"result"}),
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "store_breaker_state",
			Help: "Store circuit breaker: 0 closed, 1 half-open, 2 open."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.m.lookups, c.m.storeReads, c.m.breaker)
	}
	c.breaker = gobreaker.NewCircuitBreaker[engine.Snapshot](gobreaker.Settings{
		Name:        "prefetch-store",
		Timeout:     cfg.BreakerOpenFor,
		ReadyToTrip: func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= cfg.BreakerFailures },
		OnStateChange: func(_ string, from, to gobreaker.State) { // under the breaker's lock: metric and log only
			c.m.breaker.Set(float64(to))
			c.log.Warn("store breaker changed state", "from", from.String(), "to", to.String())
		},
	})
	return c, nil
}

func (c *Cache) uniform() float64 {
	c.randMu.Lock()
	defer c.randMu.Unlock()
	return c.cfg.Rand.Float64()
}

// Hints returns a jittered device TTL and refresh hint for e.
func (c *Cache) Hints(e *Entry) (ttl, refresh time.Duration) {
	base := c.cfg.DefaultTTL
	if e.Map != nil && e.Map.TTLSeconds > 0 {
		base = time.Duration(e.Map.TTLSeconds) * time.Second
	}
	ttl = JitteredTTL(base, c.cfg.TTLJitter, c.uniform())
	return ttl, RefreshAfter(ttl, c.cfg.RefreshLo, c.cfg.RefreshHi, c.uniform())
}

// HintSeconds is Hints in whole seconds (at least 1), as responses carry them.
func (c *Cache) HintSeconds(e *Entry) (ttl, refresh int) {
	t, r := c.Hints(e)
	return seconds(t), seconds(r)
}

// RetryAfterSeconds is a jittered Retry-After: U(base, 2*base), whole seconds.
func (c *Cache) RetryAfterSeconds(base time.Duration) int {
	return seconds(JitteredTTL(base*3/2, 1.0/3, c.uniform()))
}

// Peek returns the cached entry for event without loading or expiring it.
func (c *Cache) Peek(event string) *Entry {
	e, _ := c.lru.Peek(event)
	return e
}

// Get returns event's snapshot: from the local cache while fresh, else from one
// store read shared by every concurrent caller, else (store failing) the last
// good copy marked stale.
func (c *Cache) Get(ctx context.Context, event string) (Result, error) {
	now := c.cfg.Now()
	old, _ := c.lru.Get(event)
	if old != nil && now.Before(old.freshUntil) {
		c.count(event, "hit")
		return c.result(event, old, false)
	}
	ch := c.sf.DoChan(event, func() (any, error) { return c.load(event) })
	var r singleflight.Result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	if r.Err == nil {
		if r.Shared {
			c.count(event, "shared")
		} else {
			c.count(event, "miss")
		}
		return c.result(event, r.Val.(*Entry), false)
	}
	if old != nil && now.Sub(old.LoadedAt) < c.cfg.MaxStale {
		c.count(event, "stale")
		return c.result(event, old, true)
	}
	c.count(event, "unavailable")
	return Result{}, fmt.Errorf("%w: %v", ErrUnavailable, r.Err)
}

// count records one lookup's result (the metric, and OnLookup when set).
func (c *Cache) count(event, result string) {
	c.m.lookups.WithLabelValues(result).Inc()
	if c.cfg.OnLookup != nil {
		c.cfg.OnLookup(event, result)
	}
}

func (c *Cache) result(event string, e *Entry, stale bool) (Result, error) {
	if e.NotFound {
		c.count(event, "not_found")
		return Result{Entry: e, Stale: stale}, ErrNotFound
	}
	return Result{Entry: e, Stale: stale}, nil
}

// load reads the store once (through the breaker) and publishes a new entry.
// It first looks again: a caller that missed the cache just before another
// flight for the same event finished must not start a second read.
func (c *Cache) load(event string) (*Entry, error) {
	if e, ok := c.lru.Peek(event); ok && c.cfg.Now().Before(e.freshUntil) {
		return e, nil
	}
	snap, err := c.breaker.Execute(func() (engine.Snapshot, error) {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StoreTimeout)
		defer cancel()
		return c.store.Snapshot(ctx, event)
	})
	if err != nil {
		c.m.storeReads.WithLabelValues("error").Inc()
		return nil, err
	}
	c.m.storeReads.WithLabelValues("ok").Inc()
	now := c.cfg.Now()
	e := &Entry{Event: event, Gen: c.gen.Add(1), Current: snap.Current, Live: snap.Live, LoadedAt: now}
	if snap.Map != nil {
		m, err := wire.ParseStageMap(snap.Map.Raw)
		if err != nil {
			// Stored maps were validated on PUT; a bad one is a bug or tampering.
			c.log.Error("stored stage map does not parse; serving without it", "event", event, "err", err)
		} else {
			e.Map, e.MapVersion, e.Digests = &m, snap.Map.Version, m.Digests()
			for k := range m.Stages {
				e.Keys = append(e.Keys, k)
			}
			slices.Sort(e.Keys)
		}
	}
	life := c.cfg.FreshFor
	if e.Map == nil && e.Current == nil {
		e.NotFound, life = true, c.cfg.NotFoundFor
	}
	e.freshUntil = now.Add(JitteredTTL(life, 0.5, c.uniform()))
	c.lru.Add(event, e)
	return e, nil
}
