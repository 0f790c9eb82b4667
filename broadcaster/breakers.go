package broadcaster

import (
	"context"
	"errors"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/stagecast/stagecast/internal/engine"
)

// bulkheads are the broadcaster's circuit breakers, one per class of engine
// work so that one failing class never fails another: stage changes have one
// breaker per event (a Redis Cluster shard that fails over trips only its own
// events' breakers), map and window writes share one, reads (current stage,
// reports, stored maps) share one. A slow report never blocks a stage change.
//
// Their states are read when metrics are scraped (hardening #7), not kept
// from transitions: a breaker leaves the open state only when it is asked
// (gobreaker is lazy), so a gauge set on transitions alone could show "open"
// for good after the engine recovered. Reading State() makes that move.
type bulkheads struct {
	maps, reads *gobreaker.CircuitBreaker[any]
	notes       *gobreaker.CircuitBreaker[any]
	stages      *lru.Cache[string, *gobreaker.CircuitBreaker[any]]
	settings    func(name string) gobreaker.Settings
}

// openEvents counts the events whose stage-change breaker is open now.
func (b *bulkheads) openEvents() int {
	n := 0
	for _, cb := range b.stages.Values() {
		if cb.State() == gobreaker.StateOpen {
			n++
		}
	}
	return n
}

// collector exports the breakers' states as they are at the scrape.
type breakerCollector struct {
	b          *bulkheads
	state      *prometheus.Desc
	openEvents *prometheus.Desc
}

func (c breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.state; ch <- c.openEvents }

func (c breakerCollector) Collect(ch chan<- prometheus.Metric) {
	for name, cb := range map[string]*gobreaker.CircuitBreaker[any]{"maps": c.b.maps, "reads": c.b.reads, "notes": c.b.notes} {
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, float64(cb.State()), name)
	}
	ch <- prometheus.MustNewConstMetric(c.openEvents, prometheus.GaugeValue, float64(c.b.openEvents()))
}

func (b *bulkheads) collector() prometheus.Collector {
	return breakerCollector{b: b,
		state: prometheus.NewDesc("stagecast_broadcaster_engine_breaker_state",
			"Engine circuit breakers of map writes, reads and notifications, as at the scrape: 0 closed, 1 half-open, 2 open.", []string{"breaker"}, nil),
		openEvents: prometheus.NewDesc("stagecast_broadcaster_open_event_breakers",
			"Events whose stage-change breaker is open, as at the scrape (their engine shard failed repeatedly).", nil, nil)}
}

// maxEventBreakers bounds the per-event breakers kept (the least recently used
// go first; a new one starts closed).
const maxEventBreakers = 10000

func newBulkheads(cfg Config, s *Server) *bulkheads {
	b := &bulkheads{}
	b.settings = func(name string) gobreaker.Settings {
		return gobreaker.Settings{
			Name:    name,
			Timeout: cfg.BreakerOpenFor,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= cfg.BreakerFailures
			},
			// Runs under the breaker's lock: only log.
			OnStateChange: func(name string, from, to gobreaker.State) {
				s.log.Warn("engine breaker changed state", "breaker", name, "from", from.String(), "to", to.String())
			},
			IsSuccessful: func(err error) bool {
				// Caller errors are not engine failures: a request the engine
				// refuses (a bound, a conflict), a 4xx, a caller that left.
				var ae *apiError
				return err == nil || engine.Refused(err) || errors.Is(err, context.Canceled) || (errors.As(err, &ae) && ae.status < 500)
			},
		}
	}
	b.maps = gobreaker.NewCircuitBreaker[any](b.settings("maps"))
	b.reads = gobreaker.NewCircuitBreaker[any](b.settings("reads"))
	b.notes = gobreaker.NewCircuitBreaker[any](b.settings("notes"))
	b.stages, _ = lru.New[string, *gobreaker.CircuitBreaker[any]](maxEventBreakers)
	return b
}

// stage returns event's stage-change breaker.
func (b *bulkheads) stage(event string) *gobreaker.CircuitBreaker[any] {
	if cb, ok := b.stages.Get(event); ok {
		return cb
	}
	cb := gobreaker.NewCircuitBreaker[any](b.settings("stage:" + event))
	if prev, found, _ := b.stages.PeekOrAdd(event, cb); found {
		return prev
	}
	return cb
}
