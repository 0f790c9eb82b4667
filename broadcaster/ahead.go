package broadcaster

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// What an autoscaler needs to scale the proxy and prefetch tiers before the
// moment instead of after the herd (deploy/k8s/overlays/live-event): how long
// until the next armed stage, how many are armed in the next hour, how many
// events have their live window on. Read from the engine every aheadEvery
// (never on a request's path), served at scrape time.

// AheadHorizon is how far ahead armed stages are looked for; with none
// within it, next_armed_stage_seconds reads the horizon itself.
const AheadHorizon = time.Hour

const aheadEvery = 15 * time.Second

type aheadMetrics struct {
	next    prometheus.Gauge
	armed   *prometheus.GaugeVec
	live    prometheus.Gauge
	updated prometheus.Gauge
}

func newAheadMetrics(reg prometheus.Registerer) *aheadMetrics {
	m := &aheadMetrics{
		next: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "broadcaster", Name: "next_armed_stage_seconds",
			Help: "Seconds until the next armed stage of any event (3600, the horizon, when none is armed within the hour): scale ahead of it."}),
		armed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "broadcaster", Name: "armed_stages_ahead",
			Help: "Armed stages due within the next 15 minutes and the next hour, over every event."}, []string{"within"}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "broadcaster", Name: "live_events",
			Help: "Events whose live window is on (PUT /v1/events/{event}/window), among the 1,000 most recently changed."}),
		updated: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "broadcaster", Name: "ahead_updated_timestamp_seconds",
			Help: "When the ahead-of-the-event gauges were last read from the engine (Unix seconds); stale: the engine is not answering."}),
	}
	m.next.Set(AheadHorizon.Seconds())
	reg.MustRegister(m.next, m.armed, m.live, m.updated)
	return m
}

// aheadLoop refreshes the gauges every aheadEvery until ctx ends.
func (s *Server) aheadLoop(ctx context.Context) {
	t := time.NewTicker(aheadEvery)
	defer t.Stop()
	for {
		s.refreshAhead(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// maxAheadSchedules bounds one read of the armed stages ahead; live windows
// are counted among the maxAheadEvents most recently changed events (a live
// event is a recent one), so a refresh costs at most 3,000 pipelined engine
// commands.
const (
	maxAheadSchedules = 10000
	maxAheadEvents    = 1000
)

func (s *Server) refreshAhead(ctx context.Context) {
	now := s.cfg.Now()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.EngineTimeout)
	defer cancel()
	due, err := s.eng.DueSchedules(rctx, now.Add(AheadHorizon).UnixMilli(), maxAheadSchedules)
	if err != nil {
		s.log.Warn("armed stages ahead not read; the gauges keep their last values", "err", err)
		return
	}
	next, in15, in60 := AheadHorizon.Seconds(), 0, 0
	for _, d := range due {
		in := max(time.UnixMilli(d.AtMS).Sub(now), 0)
		next = min(next, in.Seconds())
		if in <= 15*time.Minute {
			in15++
		}
		in60++
	}
	events, err := s.eng.Events(rctx, maxAheadEvents)
	if err != nil {
		s.log.Warn("live windows not read; the gauges keep their last values", "err", err)
		return
	}
	live := 0
	for _, e := range events {
		if e.Live {
			live++
		}
	}
	s.ahead.next.Set(next)
	s.ahead.armed.WithLabelValues("15m").Set(float64(in15))
	s.ahead.armed.WithLabelValues("60m").Set(float64(in60))
	s.ahead.live.Set(float64(live))
	s.ahead.updated.Set(float64(now.Unix()))
}
