package broadcaster

import (
	"context"
	"errors"
	"sync/atomic"

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
type bulkheads struct {
	maps, reads *gobreaker.CircuitBreaker[any]
	notes       *gobreaker.CircuitBreaker[any]
	stages      *lru.Cache[string, *gobreaker.CircuitBreaker[any]]
	settings    func(name string) gobreaker.Settings
	openEvents  atomic.Int64
}

// maxEventBreakers bounds the per-event breakers kept (the least recently used
// go first; a new one starts closed).
const maxEventBreakers = 10000

func newBulkheads(cfg Config, s *Server, state *prometheus.GaugeVec) *bulkheads {
	b := &bulkheads{}
	b.settings = func(name string) gobreaker.Settings {
		return gobreaker.Settings{
			Name:    name,
			Timeout: cfg.BreakerOpenFor,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= cfg.BreakerFailures
			},
			// Runs under the breaker's lock: only count, set a metric and log.
			OnStateChange: func(name string, from, to gobreaker.State) {
				switch name {
				case "maps", "reads", "notes":
					state.WithLabelValues(name).Set(float64(to))
				default:
					if to == gobreaker.StateOpen {
						b.openEvents.Add(1)
					} else if from == gobreaker.StateOpen {
						b.openEvents.Add(-1)
					}
				}
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
	state.WithLabelValues("maps").Set(0)
	state.WithLabelValues("reads").Set(0)
	b.notes = gobreaker.NewCircuitBreaker[any](b.settings("notes"))
	state.WithLabelValues("notes").Set(0)
	b.stages, _ = lru.NewWithEvict(maxEventBreakers, func(_ string, cb *gobreaker.CircuitBreaker[any]) {
		if cb.State() == gobreaker.StateOpen {
			b.openEvents.Add(-1)
		}
	})
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
