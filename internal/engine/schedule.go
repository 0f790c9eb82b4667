package engine

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// Armed stages: a producer schedules "stage K at T". The engine assigns the
// version at arming (max(newest logged + 1, T in microseconds), so the armed
// change is newer than anything set before T and older than anything set after
// it), keeps the schedule, and publishes it on the event's channel as a stage
// message with Arm set: proxies hold it and fire it from their own clocks at T.
// The broadcaster fires it centrally too (FireSchedule), writing the log entry
// with exactly that version: proxies that fired already drop it as a duplicate;
// proxies that missed the arming deliver it then.

// Errors of schedules.
var (
	ErrScheduleNotFound = errors.New("no such schedule (cancelled, fired, or never armed)")
	// ErrScheduleChanged: a cancel named another version of the schedule.
	ErrScheduleChanged = errors.New("the schedule has another version")
	// ErrScheduleSuperseded: at fire time the event already had a newer version.
	ErrScheduleSuperseded = errors.New("a newer stage change superseded the schedule")
	// ErrTooManySchedules: the event holds MaxSchedules already.
	ErrTooManySchedules = errors.New("too many schedules for this event")
	// ErrScheduleConflict: the schedule id (its Idempotency-Key) was armed with
	// another stage, time, target or priority.
	ErrScheduleConflict = errors.New("the schedule id was armed with another body")
)

// Refused reports whether err is the engine refusing what a request asks (a
// bound, a conflict, something not there) rather than failing: callers answer
// it with a 4xx, and it never counts as an engine failure (breakers, alerts).
func Refused(err error) bool {
	for _, r := range []error{ErrIdempotencyConflict, ErrScheduleNotFound, ErrScheduleChanged, ErrScheduleSuperseded,
		ErrTooManySchedules, ErrScheduleConflict, ErrNoteNotFound} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// ArmRequest is one schedule.
type ArmRequest struct {
	ID       string // the schedule id (a wire id); arming an existing id returns it
	Event    string
	Key      string
	Target   *wire.Target
	Critical bool
	AtMS     int64 // when to fire, Unix ms
}

// ScheduleRef names a schedule in the due index.
type ScheduleRef struct {
	Event, ID string
	AtMS      int64
}

// Fired returns the stage a schedule message fires (Arm cleared).
func Fired(s wire.Stage) wire.Stage {
	s.Arm = nil
	return s
}

// MaxSchedules bounds the schedules an event holds.
const MaxSchedules = 64

// Arm stores and publishes a schedule; it returns the armed stage message.
func (m *Memory) Arm(ctx context.Context, req ArmRequest) (wire.Stage, error) {
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
			return s, ErrScheduleConflict
		}
		return s, nil
	}
	if len(e.sched) >= MaxSchedules {
		return wire.Stage{}, ErrTooManySchedules
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
func (m *Memory) Schedules(ctx context.Context, event string) ([]wire.Stage, error) {
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
func (m *Memory) CancelSchedule(ctx context.Context, event, id string, v uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return ErrScheduleNotFound
	}
	s, ok := e.sched[id]
	if !ok {
		return ErrScheduleNotFound
	}
	if v != 0 && s.V != v {
		return ErrScheduleChanged
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
func (m *Memory) DueSchedules(ctx context.Context, nowMS int64, limit int) ([]ScheduleRef, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ScheduleRef
	for name, e := range m.events {
		for id, s := range e.sched {
			if s.Arm.At <= nowMS {
				out = append(out, ScheduleRef{Event: name, ID: id, AtMS: s.Arm.At})
			}
		}
	}
	// the oldest first, as the Redis engine's sorted index lists them
	slices.SortFunc(out, func(a, b ScheduleRef) int {
		return cmp.Or(cmp.Compare(a.AtMS, b.AtMS), strings.Compare(a.Event+"\n"+a.ID, b.Event+"\n"+b.ID))
	})
	return out[:min(len(out), limit)], nil
}

// FireSchedule makes schedule id a stage change with its armed version: the
// log entry and the publish, as SetStage does. Schedules of the event with a
// lower version and a fire time no later than id's fire first, in version
// order (two arms at one time have consecutive versions: neither may be
// dropped as superseded by the other).
func (m *Memory) FireSchedule(ctx context.Context, event, id string) (wire.Stage, error) {
	if err := ctx.Err(); err != nil {
		return wire.Stage{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return wire.Stage{}, ErrScheduleNotFound
	}
	s, ok := e.sched[id]
	if !ok {
		return wire.Stage{}, ErrScheduleNotFound
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
		st := Fired(o)
		m.appendLog(e, st)
		for _, sub := range e.subs {
			sub.onStage(st)
		}
	}
	if e.v != s.V {
		return wire.Stage{}, ErrScheduleSuperseded
	}
	return Fired(s), nil
}

// Time is the engine's clock (proxies compare theirs with it before they fire
// armed stages locally).
func (m *Memory) Time(ctx context.Context) (time.Time, error) {
	return m.cfg.Now(), ctx.Err()
}
