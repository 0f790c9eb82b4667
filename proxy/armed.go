package proxy

import (
	"context"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Armed stages at the edge. A schedule arrives on the event's engine channel
// ahead of time (a stage message with Arm set) and the topic holds it; at its
// time the topic fires it from this proxy's clock, as if the engine had just
// published it (same version). The broadcaster fires it centrally too: that
// message is then a duplicate version and changes nothing here; a proxy that
// missed the arming delivers the central one. A proxy whose clock is off Redis's
// by more than MaxClockSkew does not fire locally (it waits for the central
// fire). A cancel that arrives before the time wins. Only the topic's run
// goroutine touches its armed set; timers hand the id back to it.

type armedStage struct {
	stage wire.Stage // Arm set
	timer *time.Timer
}

// handleArm applies an arm or cancel message (run goroutine only).
func (t *topic) handleArm(s wire.Stage) {
	if t.armed == nil {
		t.armed = map[string]*armedStage{}
	}
	id := s.Arm.ID
	if s.Arm.Cancel {
		if a, ok := t.armed[id]; ok {
			if a.timer != nil {
				a.timer.Stop()
			}
			delete(t.armed, id)
			t.s.metrics.armed.WithLabelValues("cancelled").Inc()
		}
		return
	}
	if _, ok := t.armed[id]; ok {
		return
	}
	a := &armedStage{stage: s}
	t.armed[id] = a
	if !t.s.skewMeasured.Load() {
		t.s.measureSkew() // once, if an arm comes before the first measurement
	}
	if !t.s.skewOK.Load() {
		t.s.metrics.armed.WithLabelValues("not_armed_skew").Inc()
		return // the central fire delivers it
	}
	t.s.metrics.armed.WithLabelValues("armed").Inc()
	d := time.UnixMilli(s.Arm.At).Sub(t.s.cfg.Now())
	a.timer = time.AfterFunc(max(d, 0), func() {
		select {
		case t.fire <- id:
		default: // run is behind: the central fire delivers it
		}
	})
}

// fireArmed fires schedule id locally (run goroutine only).
func (t *topic) fireArmed(id string) {
	a, ok := t.armed[id]
	if !ok {
		return // cancelled meanwhile
	}
	delete(t.armed, id)
	t.s.metrics.armed.WithLabelValues("fired").Inc()
	if p := t.insert([]wire.Stage{engine.Fired(a.stage)}, false); len(p) > 0 {
		t.s.metrics.broadcasts.Inc()
		t.fanout(p[0])
	}
}

// syncArmed makes the armed set the engine's list after a re-read: new ones are
// armed, ones the engine no longer lists (cancelled, or fired centrally) are
// dropped (run goroutine only).
func (t *topic) syncArmed(list []wire.Stage) {
	keep := make(map[string]bool, len(list))
	for _, s := range list {
		keep[s.Arm.ID] = true
		t.handleArm(s)
	}
	for id, a := range t.armed {
		if !keep[id] {
			if a.timer != nil {
				a.timer.Stop()
			}
			delete(t.armed, id)
		}
	}
}

// stopArmed stops every timer (the topic is ending).
func (t *topic) stopArmed() {
	for _, a := range t.armed {
		if a.timer != nil {
			a.timer.Stop()
		}
	}
}

// skewLoop measures this proxy's clock against the engine's every 30 s: the
// offset, after half the round trip, must stay within MaxClockSkew for armed
// stages to fire locally.
func (s *Server) skewLoop() {
	defer s.wg.Done()
	for {
		s.measureSkew()
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(s.jitterBetween(20*time.Second, 40*time.Second)):
		}
	}
}

func (s *Server) measureSkew() {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	t0 := s.cfg.Now()
	et, err := s.eng.Time(ctx)
	t1 := s.cfg.Now()
	if err != nil {
		s.skewOK.Store(false)
		s.log.Warn("cannot read the engine's clock: armed stages wait for the central fire", "err", err)
		return
	}
	skew := t0.Add(t1.Sub(t0) / 2).Sub(et)
	first := !s.skewMeasured.Swap(true)
	s.metrics.clockSkew.Set(skew.Seconds())
	ok := skew.Abs() <= s.cfg.MaxClockSkew
	// A warning means something is wrong: the clock is off (or was, and is
	// back). The first measurement within the budget is the normal start.
	switch was := s.skewOK.Swap(ok); {
	case !ok && (was || first):
		s.log.Warn("this proxy's clock is off the engine's: armed stages wait for the central fire", "skew", skew.String(), "budget", s.cfg.MaxClockSkew.String())
	case ok && !was && !first:
		s.log.Warn("this proxy's clock is back within the budget: armed stages fire locally again", "skew", skew.String(), "budget", s.cfg.MaxClockSkew.String())
	case ok && first:
		s.log.Debug("clock skew against the engine within the budget", "skew", skew.String(), "budget", s.cfg.MaxClockSkew.String())
	}
}
