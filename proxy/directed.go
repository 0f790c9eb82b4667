package proxy

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Directed drain. Every proxy publishes its load (connections, capacity,
// admission rate, the URL devices reach it at) through the engine. A draining
// proxy that knows live targets tells each device where to go and when:
// devices are shared among the targets by spare capacity, and each target's
// arrivals are paced at no more than 80 % of its admission rate (and spread
// over the drain window when that is slower), so no target sees a herd and
// none refuses. Devices resume there with their versions and inbox cursors.

// drainPlan is one device's instruction.
type drainPlan struct {
	send    time.Duration // when to send the frame, from the start of the drain
	afterMS int64
	to      string // "" : undirected
}

// loadLoop publishes this proxy's load every ReportInterval, on its own, so
// that a report flush stuck on a dead link does not delay the reachability
// probe the publish also is.
func (s *Server) loadLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.ReportInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		s.publishLoad(s.ctx)
	}
}

// publishLoad reports this proxy's load (loadLoop).
func (s *Server) publishLoad(ctx context.Context) {
	l := engine.ProxyLoad{ID: s.cfg.ID, URL: s.cfg.PublicURL, Connections: int64(s.Connections()),
		Capacity: int64(s.cfg.MaxConnections), AdmitRate: s.cfg.AdmitRate, Draining: s.draining.Load(), AtMS: s.cfg.Now().UnixMilli()}
	rctx, cancel := context.WithTimeout(ctx, min(time.Second, s.cfg.ReportInterval))
	defer cancel()
	err := s.eng.PutProxyLoad(rctx, l)
	if err != nil {
		s.log.Debug("load not published", "err", err)
	}
	s.reach.observe(s, err)
}

// reachability tracks whether the engine answers this proxy's writes (the
// load it publishes each ReportInterval): the probe of a partition that
// drops packets silently, which no connection error reports.
//
// Concurrency: observe runs on the report loop only; lost is read anywhere.
type reachability struct {
	failingSince time.Time // zero while the last write succeeded
	lost         atomic.Bool
}

func (r *reachability) observe(s *Server, err error) {
	now := s.cfg.Now()
	if err == nil {
		if r.lost.Swap(false) {
			s.metrics.engineReachable.Set(1)
			s.log.Warn("engine reachable again: every event re-reads its history; ready for new devices",
				"cut_for", now.Sub(r.failingSince).Round(time.Millisecond).String())
			for _, t := range s.hub.all() {
				t.requestResync()
			}
		}
		r.failingSince = time.Time{}
		return
	}
	if r.failingSince.IsZero() {
		r.failingSince = now
	}
	if !r.lost.Load() && now.Sub(r.failingSince) >= s.cfg.EngineLostAfter {
		r.lost.Store(true)
		s.metrics.engineReachable.Set(0)
		s.metrics.engineLost.Inc()
		s.log.Error("engine unreachable: not ready for new devices; connected devices keep their stage and catch up when it is back",
			"failing_for", now.Sub(r.failingSince).Round(time.Millisecond).String(), "err", err)
	}
}

// planDrain returns n devices' instructions: directed when live targets are
// known, else the undirected plan (uniform moments over the window, after_ms ~
// U(0, ReconnectJitter)).
func (s *Server) planDrain(ctx context.Context, n int) ([]drainPlan, int) {
	plans := make([]drainPlan, n)
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	loads, err := s.eng.ProxyLoads(rctx, s.cfg.Now().UnixMilli())
	cancel()
	type target struct {
		url   string
		spare float64
		rate  float64 // arrivals per second
		share int
	}
	var ts []*target
	total := 0.0
	if err == nil {
		for _, l := range loads {
			if l.ID == s.cfg.ID || l.Tier != "" || l.Draining || l.URL == "" || l.AdmitRate <= 0 || l.Capacity <= l.Connections {
				continue
			}
			if !wire.DrainTargetAllowed(s.cfg.PublicURL, l.URL, s.cfg.DrainTargets) {
				s.metrics.drainTargetsRefused.Inc() // whoever wrote it, devices are not sent there
				continue
			}
			t := &target{url: l.URL, spare: float64(l.Capacity - l.Connections), rate: 0.8 * l.AdmitRate}
			ts = append(ts, t)
			total += t.spare
		}
	}
	if len(ts) == 0 || total < float64(n) {
		s.randMu.Lock()
		for i := range plans {
			plans[i] = drainPlan{send: time.Duration(s.cfg.Rand.Int64N(int64(s.cfg.DrainWindow) + 1)),
				afterMS: time.Duration(s.cfg.Rand.Int64N(int64(s.cfg.ReconnectJitter) + 1)).Milliseconds()}
		}
		s.randMu.Unlock()
		slices.SortFunc(plans, func(a, b drainPlan) int { return int(a.send - b.send) })
		return plans, 0
	}
	// Shares by spare capacity (largest remainders), then each target's pace.
	left := n
	for _, t := range ts {
		t.share = int(float64(n) * t.spare / total)
		left -= t.share
	}
	slices.SortFunc(ts, func(a, b *target) int { return int(b.spare - a.spare) })
	for i := 0; left > 0; i = (i + 1) % len(ts) {
		ts[i].share++
		left--
	}
	window := s.cfg.DrainWindow.Seconds()
	i := 0
	for _, t := range ts {
		step := max(1/t.rate, window/float64(max(t.share, 1))) // never above 80 % of its admission rate
		for k := 0; k < t.share; k++ {
			arrive := time.Duration(float64(k) * step * float64(time.Second))
			send := max(arrive-s.cfg.ReconnectJitter, 0)
			plans[i] = drainPlan{send: send, afterMS: (arrive - send).Milliseconds(), to: t.url}
			i++
		}
	}
	slices.SortFunc(plans, func(a, b drainPlan) int { return int(a.send - b.send) })
	return plans, len(ts)
}
