package analytics

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// TopicPrefetch carries the prefetch servers' per-event counts.
const TopicPrefetch = "prefetch"

// EveryPrefetch is how often a prefetch server emits its counts.
const EveryPrefetch = 10 * time.Second

// maxPrefetchEvents bounds the events counted between two emits (the cache
// holds at most that many anyway); lookups of others count as "(other)".
const maxPrefetchEvents = 10000

// lookupResults are the cache's lookup results (prefetch.Cache.OnLookup).
var lookupResults = [...]string{"hit", "shared", "miss", "stale", "unavailable", "not_found"}

// Prefetch is the data of a "prefetch" record: one server's lookups of one
// event over the interval (Requests), by result (hit, shared, miss, stale,
// unavailable; not_found counts those of them that found no such event); and
// (event "") the requests it shed, by priority.
type Prefetch struct {
	Server     string            `json:"server"`
	IntervalMS int64             `json:"interval_ms"`
	Requests   uint64            `json:"requests"`
	Results    map[string]uint64 `json:"results,omitempty"`
	Shed       map[string]uint64 `json:"shed,omitempty"` // event "": by priority
}

// PrefetchCounter counts a prefetch server's lookups per event and its sheds
// (prefetch.Config.OnLookup, prefetch.ShedConfig.OnShed: counting only), and
// emits them every EveryPrefetch (Run).
type PrefetchCounter struct {
	p      *Producer
	server string
	now    func() time.Time

	mu     sync.RWMutex
	events map[string]*[len(lookupResults)]atomic.Uint64
	shed   sync.Map // priority -> *atomic.Uint64
	since  time.Time
}

// NewPrefetchCounter returns a counter emitting through p (nil p: counting is a no-op).
func NewPrefetchCounter(p *Producer, server string, now func() time.Time) *PrefetchCounter {
	if now == nil {
		now = time.Now
	}
	return &PrefetchCounter{p: p, server: server, now: now, events: map[string]*[len(lookupResults)]atomic.Uint64{}, since: now()}
}

// Lookup counts one lookup (prefetch.Config.OnLookup).
func (x *PrefetchCounter) Lookup(event, result string) {
	if x == nil || x.p == nil {
		return
	}
	i := resultIndex(result)
	x.mu.RLock()
	c := x.events[event]
	x.mu.RUnlock()
	if c == nil {
		x.mu.Lock()
		if c = x.events[event]; c == nil {
			if len(x.events) >= maxPrefetchEvents {
				event = "(other)"
			}
			if c = x.events[event]; c == nil {
				c = new([len(lookupResults)]atomic.Uint64)
				x.events[event] = c
			}
		}
		x.mu.Unlock()
	}
	c[i].Add(1)
}

// Shed counts one shed request (prefetch.ShedConfig.OnShed).
func (x *PrefetchCounter) Shed(priority, _ string) {
	if x == nil || x.p == nil {
		return
	}
	v, _ := x.shed.LoadOrStore(priority, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

func resultIndex(r string) int {
	for i, n := range lookupResults {
		if n == r {
			return i
		}
	}
	return len(lookupResults) - 1
}

// Flush emits the counts since the last flush, one record per event that had
// lookups and one for the sheds, and starts the next interval.
func (x *PrefetchCounter) Flush() {
	if x == nil || x.p == nil {
		return
	}
	now := x.now()
	x.mu.Lock()
	events := x.events
	x.events = make(map[string]*[len(lookupResults)]atomic.Uint64, len(events))
	interval := now.Sub(x.since).Milliseconds()
	x.since = now
	x.mu.Unlock()
	for ev, c := range events {
		rec := Prefetch{Server: x.server, IntervalMS: interval, Results: map[string]uint64{}}
		for i, n := range lookupResults {
			if v := c[i].Load(); v > 0 {
				rec.Results[n] = v
				if n != "not_found" { // an outcome of a hit, miss or shared lookup, not a lookup of its own
					rec.Requests += v
				}
			}
		}
		if rec.Requests > 0 {
			x.p.Emit(TopicPrefetch, "prefetch", ev, rec)
		}
	}
	shed := map[string]uint64{}
	x.shed.Range(func(k, v any) bool {
		if n := v.(*atomic.Uint64).Swap(0); n > 0 {
			shed[k.(string)] = n
		}
		return true
	})
	if len(shed) > 0 {
		x.p.Emit(TopicPrefetch, "prefetch_shed", "", Prefetch{Server: x.server, IntervalMS: interval, Shed: shed})
	}
}

// Run flushes every EveryPrefetch until ctx ends, then once more.
func (x *PrefetchCounter) Run(ctx context.Context) {
	if x == nil || x.p == nil {
		return
	}
	t := time.NewTicker(EveryPrefetch)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			x.Flush()
			return
		case <-t.C:
			x.Flush()
		}
	}
}
