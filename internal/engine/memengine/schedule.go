package memengine

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Arm stores and publishes a schedule; it returns the armed stage message.
func (m *Engine) Arm(ctx context.Context, req engine.ArmRequest) (wire.Stage, error) {
	if err := ctx.Err(); err != nil {
		return wire.Stage{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.event(req.Event)
	if e.sched == nil {
		e.sched = map[string]wire.Stage{}
	}
	st := wire.Stage{Event: req.Event, Key: req.Key, TS: req.AtMS, Digest: e.digests[req.Key],
		Arm: &wire.Arm{ID: req.ID, At: req.AtMS}}
	if !req.Target.IsZero() {
		st.Target = req.Target
	}
	if req.Critical {
		st.Priority = wire.PriorityCritical.String()
	}
	if s, ok := e.sched[req.ID]; ok {
		if s.Key != st.Key || s.Arm.At != st.Arm.At || s.Priority != st.Priority || !s.Target.Equal(st.Target) {
			return s, engine.ErrScheduleConflict
		}
		return s, nil
	}
	if len(e.sched) >= engine.MaxSchedules {
		return wire.Stage{}, engine.ErrTooManySchedules
	}
	st.V = max(e.v+1, uint64(req.AtMS)*1000)
	for taken := true; taken; { // a version of its own: past any armed one it meets
		taken = false
		for _, o := range e.sched {
			if o.V == st.V {
				st.V++
				taken = true
			}
		}
	}
	e.sched[req.ID] = st
	for _, s := range e.subs {
		s.onStage(st)
	}
	return st, nil
}

// Schedules lists an event's armed schedules, by fire time.
func (m *Engine) Schedules(ctx context.Context, event string) ([]wire.Stage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return nil, nil
	}
	out := make([]wire.Stage, 0, len(e.sched))
	for _, s := range e.sched {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b wire.Stage) int { return int(a.Arm.At - b.Arm.At) })
	return out, nil
}

// CancelSchedule cancels schedule id of event if it has version v (0: any).
func (m *Engine) CancelSchedule(ctx context.Context, event, id string, v uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return engine.ErrScheduleNotFound
	}
	s, ok := e.sched[id]
	if !ok {
		return engine.ErrScheduleNotFound
	}
	if v != 0 && s.V != v {
		return engine.ErrScheduleChanged
	}
	delete(e.sched, id)
	c := s
	c.Arm = &wire.Arm{ID: id, At: s.Arm.At, Cancel: true}
	for _, sub := range e.subs {
		sub.onStage(c)
	}
	return nil
}

// DueSchedules lists schedules due at nowMS (at most limit).
func (m *Engine) DueSchedules(ctx context.Context, nowMS int64, limit int) ([]engine.ScheduleRef, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []engine.ScheduleRef
	for name, e := range m.events {
		for id, s := range e.sched {
			if s.Arm.At <= nowMS {
				out = append(out, engine.ScheduleRef{Event: name, ID: id, AtMS: s.Arm.At})
			}
		}
	}
	// the oldest first, as the Redis engine's sorted index lists them
	slices.SortFunc(out, func(a, b engine.ScheduleRef) int {
		return cmp.Or(cmp.Compare(a.AtMS, b.AtMS), strings.Compare(a.Event+"\n"+a.ID, b.Event+"\n"+b.ID))
	})
	return out[:min(len(out), limit)], nil
}

// FireSchedule makes schedule id a stage change with its armed version: the
// log entry and the publish, as SetStage does. Schedules of the event with a
// lower version and a fire time no later than id's fire first, in version
// order (two arms at one time have consecutive versions: neither may be
// dropped as superseded by the other).
func (m *Engine) FireSchedule(ctx context.Context, event, id string) (wire.Stage, error) {
	if err := ctx.Err(); err != nil {
		return wire.Stage{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return wire.Stage{}, engine.ErrScheduleNotFound
	}
	s, ok := e.sched[id]
	if !ok {
		return wire.Stage{}, engine.ErrScheduleNotFound
	}
	var earlier []wire.Stage
	for oid, o := range e.sched {
		if oid != id && o.V < s.V && o.Arm.At <= s.Arm.At {
			earlier = append(earlier, o)
		}
	}
	slices.SortFunc(earlier, func(a, b wire.Stage) int { return cmp.Compare(a.V, b.V) })
	for _, o := range append(earlier, s) {
		delete(e.sched, o.Arm.ID)
		if e.v >= o.V {
			continue
		}
		st := engine.Fired(o)
		m.appendLog(e, st)
		for _, sub := range e.subs {
			sub.onStage(st)
		}
	}
	if e.v != s.V {
		return wire.Stage{}, engine.ErrScheduleSuperseded
	}
	return engine.Fired(s), nil
}

// Time is the engine's clock (proxies compare theirs with it before they fire
// armed stages locally).
func (m *Engine) Time(ctx context.Context) (time.Time, error) {
	return m.cfg.Now(), ctx.Err()
}
