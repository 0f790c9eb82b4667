package broadcaster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Armed stages: POST /v1/events/{event}/schedule arms "stage K at T". Proxies
// fire it from their clocks at T; this broadcaster fires it centrally as well
// (fireLoop), with the version assigned at arming, so a proxy that missed the
// arming still delivers and nothing is delivered twice as two versions.

// ScheduleRequest is producer.ScheduleRequest: the API's types are the public client's.
type ScheduleRequest = producer.ScheduleRequest

// ScheduleReply is producer.ScheduleReply: the API's types are the public client's.
type ScheduleReply = producer.ScheduleReply

// Bounds of a schedule's time.
const (
	minLead     = 200 * time.Millisecond // at least this far ahead: time to reach every proxy
	maxLead     = 7 * 24 * time.Hour
	fireEvery   = 20 * time.Millisecond
	maxDuePerGo = 100
)

func scheduleReply(st wire.Stage, state string) ScheduleReply {
	return ScheduleReply{ID: st.Arm.ID, Event: st.Event, Stage: st.Key, V: st.V, At: st.Arm.At, Target: (*producer.Target)(st.Target), State: state}
}

func (s *Server) armStage(r *http.Request) (any, error) {
	event := r.PathValue("event")
	var req ScheduleRequest
	if err := decodeJSON(r, maxStageBody, &req); err != nil {
		return nil, err
	}
	if err := checkStageFields(req.Stage, (*wire.Target)(req.Target), req.Priority); err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	at := time.UnixMilli(req.At)
	if lead := at.Sub(now); lead < minLead || lead > maxLead {
		return nil, errf(http.StatusBadRequest, "bad_request", "at must be %v to %v ahead (it is %v ahead): for now, POST .../stage", minLead, maxLead, lead.Round(time.Millisecond))
	}
	idem := r.Header.Get("Idempotency-Key")
	if len(idem) > 200 {
		return nil, errf(http.StatusBadRequest, "bad_request", "Idempotency-Key longer than 200 characters")
	}
	// The schedule id is the key's hash (a retry arms nothing twice) or random.
	var id string
	if idem != "" {
		sum := sha256.Sum256([]byte(event + "\n" + idem))
		id = "s" + hex.EncodeToString(sum[:8])
	} else {
		id = "s" + strconv.FormatUint(uint64(now.UnixNano()), 36) + newNoteID()[1:9]
	}
	st, err := call(s, s.breakers.stage(event), r, func(ctx context.Context) (wire.Stage, error) {
		return s.eng.Arm(ctx, engine.ArmRequest{ID: id, Event: event, Key: req.Stage, Target: (*wire.Target)(req.Target),
			Critical: req.Priority == "critical", AtMS: req.At})
	})
	switch {
	case errors.Is(err, engine.ErrTooManySchedules):
		return nil, errf(http.StatusConflict, "schedule_limit", "event %s holds %d armed schedules already (the most it may): cancel one or fire it first", event, engine.MaxSchedules)
	case errors.Is(err, engine.ErrScheduleConflict):
		return nil, errf(http.StatusConflict, "idempotency_conflict", "Idempotency-Key %q armed another stage, time, target or priority (v%d); use a new key", idem, st.V)
	case err != nil:
		return nil, err
	}
	s.audit(r, "arm_stage", "stage", st.Key, "v", st.V, "at", st.Arm.At, "schedule", st.Arm.ID, "result", "armed")
	s.trail(r, engine.AuditEntry{Action: "arm_stage", Stage: st.Key, V: st.V, Result: "armed", Detail: "at " + time.UnixMilli(st.Arm.At).UTC().Format(time.RFC3339Nano) + " id " + st.Arm.ID})
	return statusReply{http.StatusCreated, scheduleReply(st, "armed")}, nil
}

func (s *Server) listSchedules(r *http.Request) (any, error) {
	event := r.PathValue("event")
	list, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]wire.Stage, error) { return s.eng.Schedules(ctx, event) })
	if err != nil {
		return nil, err
	}
	out := make([]ScheduleReply, 0, len(list))
	for _, st := range list {
		out = append(out, scheduleReply(st, "armed"))
	}
	return map[string]any{"event": event, "schedules": out}, nil
}

func (s *Server) cancelSchedule(r *http.Request) (any, error) {
	event, id := r.PathValue("event"), r.PathValue("id")
	if err := wire.CheckID("schedule", id); err != nil {
		return nil, errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	var v uint64
	if q := r.URL.Query().Get("v"); q != "" {
		var err error
		if v, err = strconv.ParseUint(q, 10, 64); err != nil || v == 0 {
			return nil, errf(http.StatusBadRequest, "bad_request", "v must be the schedule's version")
		}
	} else {
		return nil, errf(http.StatusBadRequest, "bad_request", "cancel needs ?v=<the schedule's version> (what you are cancelling)")
	}
	_, err := call(s, s.breakers.stage(event), r, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.eng.CancelSchedule(ctx, event, id, v)
	})
	switch {
	case errors.Is(err, engine.ErrScheduleNotFound):
		return nil, errf(http.StatusNotFound, "not_found", "no armed schedule %s (cancelled, fired, or never armed)", id)
	case errors.Is(err, engine.ErrScheduleChanged):
		return nil, errf(http.StatusConflict, "conflict", "schedule %s has another version than v%d", id, v)
	case err != nil:
		return nil, err
	}
	s.audit(r, "cancel_schedule", "schedule", id, "v", v, "result", "cancelled")
	s.trail(r, engine.AuditEntry{Action: "cancel_schedule", V: v, Result: "cancelled", Detail: "id " + id})
	return map[string]any{"id": id, "event": event, "v": v, "state": "cancelled"}, nil
}

// fireLoop fires due schedules centrally until ctx ends. Several broadcasters
// may run it: the engine fires each schedule once. A schedule whose fire fails
// (its event's shard failing over) is skipped for a backoff while the others
// fire (hardening #8): the due index lists the oldest first, and one bad shard
// must not starve every other event's fires. The skip list is bounded.
func (s *Server) fireLoop(ctx context.Context) {
	t := time.NewTicker(fireEvery)
	defer t.Stop()
	type skip struct {
		until   time.Time
		backoff time.Duration
	}
	skipped := map[engine.ScheduleRef]skip{}
	const maxSkipped = 1000
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		for ref, sk := range skipped {
			if now.After(sk.until.Add(time.Minute)) {
				delete(skipped, ref) // fired, cancelled or gone meanwhile
			}
		}
		dctx, cancel := context.WithTimeout(ctx, s.cfg.EngineTimeout)
		due, err := s.eng.DueSchedules(dctx, now.UnixMilli(), maxDuePerGo+len(skipped))
		cancel()
		if err != nil {
			s.log.Warn("due schedules not read; retrying", "err", err)
			continue
		}
		fired := 0
		for _, d := range due {
			if sk, ok := skipped[d]; ok && now.Before(sk.until) {
				continue
			}
			if fired++; fired > maxDuePerGo {
				break
			}
			fctx, cancel := context.WithTimeout(ctx, s.cfg.EngineTimeout)
			st, err := s.eng.FireSchedule(fctx, d.Event, d.ID)
			cancel()
			switch {
			case err == nil:
				delete(skipped, d)
				s.m.changes.WithLabelValues("scheduled").Inc()
				s.log.Info("audit", "producer", "scheduler", "action", "fire_schedule", "event", d.Event, "schedule", d.ID,
					"stage", st.Key, "v", st.V, "late_ms", s.cfg.Now().UnixMilli()-d.AtMS, "result", "created")
			case errors.Is(err, engine.ErrScheduleNotFound):
				delete(skipped, d)
			case errors.Is(err, engine.ErrScheduleSuperseded):
				delete(skipped, d)
				s.log.Warn("schedule superseded by a newer stage change; not fired", "event", d.Event, "schedule", d.ID)
			default:
				sk := skipped[d]
				sk.backoff = min(max(2*sk.backoff, 100*time.Millisecond), 5*time.Second)
				sk.until = s.cfg.Now().Add(sk.backoff)
				if _, ok := skipped[d]; ok || len(skipped) < maxSkipped {
					skipped[d] = sk
				}
				s.log.Warn("schedule not fired; retrying after the others", "event", d.Event, "schedule", d.ID, "in", sk.backoff.String(), "err", err)
			}
		}
	}
}
