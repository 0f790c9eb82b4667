package proxy

import (
	"context"
	"time"
)

// Paced broadcasts. A change marked paced (a stage devices do not hold, which
// makes each of them fetch) is offered to this proxy's devices in waves every
// 100 ms, PacedRate devices a second, halved while the prefetch tier reports
// shedding normal work and cut to a fifth while it sheds critical work (its
// level, read through the engine each report interval). The devices get the
// same frame, later; a newer change stops the waves (it goes to everyone).
// Devices that subscribe meanwhile catch up at once, as always.

const paceTick = 100 * time.Millisecond

// paceFactor is the share of PacedRate used at the prefetch tier's level.
func paceFactor(level int) float64 {
	switch level {
	case 0:
		return 1
	case 1:
		return 0.5
	}
	return 0.2
}

// startPaced offers p to the topic's devices in waves (run goroutine; the
// waves run in their own goroutine).
func (t *topic) startPaced(ctx context.Context, p *prepared) {
	if t.paceCancel != nil {
		t.paceCancel() // the newer change supersedes the older waves
	}
	pctx, cancel := context.WithCancel(ctx)
	t.paceCancel = cancel
	t.mu.RLock()
	conns := append([]*conn(nil), t.list...)
	t.mu.RUnlock()
	t.s.metrics.pacedBroadcasts.Inc()
	t.s.wg.Add(1)
	go func() {
		defer t.s.wg.Done()
		tick := time.NewTicker(paceTick)
		defer tick.Stop()
		budget := 0.0
		for len(conns) > 0 {
			rate := float64(t.s.cfg.PacedRate) * paceFactor(int(t.s.prefetchLevel.Load()))
			budget += rate * paceTick.Seconds()
			n := min(len(conns), int(budget))
			budget -= float64(n)
			for _, c := range conns[:n] {
				c.offer(t, p)
			}
			t.s.metrics.pacedOffers.Add(float64(n))
			clear(conns[:n])
			conns = conns[n:]
			if len(conns) == 0 {
				return
			}
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// readTierLoad keeps the prefetch tier's highest shedding level (report loop).
func (s *Server) readTierLoad(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	loads, err := s.eng.ProxyLoads(rctx, s.cfg.Now().UnixMilli())
	if err != nil {
		return // keep the last level
	}
	level := 0
	for _, l := range loads {
		if l.Tier == "prefetch" {
			level = max(level, l.Shedding)
		}
	}
	s.prefetchLevel.Store(int32(level))
}

// PrefetchLevel is the prefetch tier's shedding level as this proxy last read it.
func (s *Server) PrefetchLevel() int { return int(s.prefetchLevel.Load()) }
