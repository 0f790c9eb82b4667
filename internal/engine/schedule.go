package engine

import (
	"errors"

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
