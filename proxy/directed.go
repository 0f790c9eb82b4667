package proxy

import (
	"context"
	"slices"
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

// publishLoad reports this proxy's load (report loop).
func (s *Server) publishLoad(ctx context.Context) {
	l := engine.ProxyLoad{ID: s.cfg.ID, URL: s.cfg.PublicURL, Connections: int64(s.Connections()),
		Capacity: int64(s.cfg.MaxConnections), AdmitRate: s.cfg.AdmitRate, Draining: s.draining.Load(), AtMS: s.cfg.Now().UnixMilli()}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.eng.PutProxyLoad(rctx, l); err != nil {
		s.log.Debug("load not published", "err", err)
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
