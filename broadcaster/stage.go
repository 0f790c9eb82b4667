package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Stage changes: POST /v1/events/{event}/stage, its retries and idempotency,
// and GET /v1/events/{event}.

// StageRequest is producer.StageRequest: the API's types are the public client's.
type StageRequest = producer.StageRequest

// StageReply is producer.StageReply: the API's types are the public client's.
type StageReply = producer.StageReply

const maxStageBody = 16 << 10

// checkStageFields validates what a stage change and a schedule share.
func checkStageFields(stage string, target *wire.Target, priority string) error {
	if err := wire.CheckID("stage", stage); err != nil {
		return errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	if err := target.Validate(); err != nil {
		return errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	if priority != "" && priority != "normal" && priority != "critical" {
		return errf(http.StatusBadRequest, "bad_request", "stage priority %q: only critical or normal", priority)
	}
	return nil
}

func (s *Server) setStage(r *http.Request) (any, error) {
	event := r.PathValue("event")
	var req StageRequest
	if err := decodeJSON(r, maxStageBody, &req); err != nil {
		return nil, err
	}
	if err := checkStageFields(req.Stage, (*wire.Target)(req.Target), req.Priority); err != nil {
		return nil, err
	}
	idem := r.Header.Get("Idempotency-Key")
	if err := checkIdemKey(idem); err != nil {
		return nil, err
	}
	// A keyless request gets an internal key, so retries inside the budget (a
	// pooled Redis connection found dead only on use, a master failing over)
	// can never make a second version, and the producer can retry with it.
	key, keyTTL := idem, time.Duration(0)
	if key == "" {
		key = "auto-" + strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
		keyTTL = AutoKeyTTL
	}
	ts := s.cfg.Now().UnixMilli()
	res, err := s.changeStage(r.Context(), engine.SetRequest{Event: event, Key: req.Stage, Target: (*wire.Target)(req.Target), TS: ts, IdempotencyKey: key, KeyTTL: keyTTL,
		Critical: req.Priority == "critical", Paced: req.Paced})
	if err != nil {
		s.audit(r, "set_stage", "stage", req.Stage, "idempotency_key", key, "result", "error", "err", err.Error())
		s.trail(r, engine.AuditEntry{Action: "set_stage", Stage: req.Stage, Result: "error", Detail: err.Error()})
	}
	if errors.Is(err, engine.ErrIdempotencyConflict) {
		return nil, errf(http.StatusConflict, "idempotency_conflict", "Idempotency-Key %q was used for stage %q (v%d); use a new key", idem, res.Stage.Key, res.Stage.V)
	}
	if err != nil {
		return nil, s.outcomeUnknown(err, key)
	}
	if res.Replayed {
		s.m.changes.WithLabelValues("replayed").Inc()
		s.audit(r, "set_stage", "stage", res.Stage.Key, "v", res.Stage.V, "idempotency_key", idem, "result", "replayed")
		s.trail(r, engine.AuditEntry{Action: "set_stage", Stage: res.Stage.Key, V: res.Stage.V, Result: "replayed"})
	} else {
		s.m.changes.WithLabelValues("created").Inc()
		s.audit(r, "set_stage", "stage", res.Stage.Key, "v", res.Stage.V, "target", res.Stage.Target, "idempotency_key", idem, "result", "created")
		s.trail(r, engine.AuditEntry{Action: "set_stage", Stage: res.Stage.Key, V: res.Stage.V, Result: "created", Detail: targetDetail(res.Stage.Target, req.Priority)})
	}
	return replyOf(res.Stage), nil
}

// changeStage runs one stage change through the event's breaker, retrying a
// failing engine under the same idempotency key (see retrying).
func (s *Server) changeStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	return retrying(s, ctx, s.breakers.stage(req.Event), "stage change", []any{"event", req.Event},
		func(ctx context.Context) (engine.SetResult, error) { return s.eng.SetStage(ctx, req) })
}

// retrying runs f through breaker cb, retrying a failing engine (attempts)
// until StageBudget is spent. f must be safe to repeat (an idempotency key, a
// note id). It returns f's last result.
func retrying[T any](s *Server, ctx context.Context, cb *gobreaker.CircuitBreaker[any], what string, attrs []any, f func(context.Context) (T, error)) (T, error) {
	var res T
	err := s.attempts(ctx, cb, what+" failed; retrying with the same key", attrs, func(actx context.Context) (bool, error) {
		var err error
		res, err = withinDeadline(actx, f)
		return err != nil && !errors.Is(err, engine.ErrIdempotencyConflict), err
	})
	return res, err
}

// attempts runs step through breaker cb until it needs no retry (again
// false), with full-jitter backoff between attempts (50 ms x 2^attempt, at
// most 400 ms) until StageBudget is spent; each attempt's ctx ends after
// EngineTimeout or with the budget. The attempts are one outcome for the
// breaker, so a master failing over does not open it. It returns the last
// attempt's error, or the breaker's refusal (then step never ran).
func (s *Server) attempts(ctx context.Context, cb *gobreaker.CircuitBreaker[any], msg string, attrs []any, step func(context.Context) (again bool, err error)) error {
	deadline := s.cfg.Now().Add(s.cfg.StageBudget)
	_, err := cb.Execute(func() (any, error) {
		for attempt := 0; ; attempt++ {
			actx, cancel := context.WithTimeout(ctx, min(s.cfg.EngineTimeout, deadline.Sub(s.cfg.Now())))
			again, err := step(actx)
			cancel()
			if !again || ctx.Err() != nil {
				return nil, err
			}
			s.m.engErr.Inc()
			wait := time.Duration(rand.Int64N(int64(min(400*time.Millisecond, 50*time.Millisecond<<min(attempt, 4))) + 1))
			if wait+50*time.Millisecond > deadline.Sub(s.cfg.Now()) {
				return nil, err
			}
			s.log.Warn(msg, append(attrs, "attempt", attempt+1, "in", wait.String(), "err", err)...)
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(wait):
			}
		}
	})
	return err
}

// withinDeadline runs f(ctx) and returns when it does or when ctx ends,
// whichever is first: the budget is kept even where the engine's client does
// not honour ctx (rueidis dials and handshakes a new connection under its own
// dial timeout, up to a second past the deadline on a link that drops
// packets). An abandoned call ends by the engine's own timeouts; its outcome
// is unknown, as the caller's answer (503 outcome_unknown) says.
func withinDeadline[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// checkIdemKey checks an Idempotency-Key header: at most 200 printable ASCII
// characters without spaces ("" is allowed: no key).
func checkIdemKey(idem string) error {
	if len(idem) > 200 || strings.ContainsFunc(idem, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return errf(http.StatusBadRequest, "bad_request", "Idempotency-Key must be 1-200 printable ASCII characters without spaces")
	}
	return nil
}

// outcomeUnknown turns a failed stage change into the producer's answer: 503,
// nothing known to be changed or not (a timeout, or a change Redis made but did
// not replicate in time), and the key to retry with.
func (s *Server) outcomeUnknown(err error, key string) error {
	ae := s.engineError(err)
	if !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		ae.code = "outcome_unknown"
		ae.msg = fmt.Sprintf("the engine did not confirm the change within %v (%v); it may or may not have happened: retry with Idempotency-Key %s, which never makes a second version",
			s.cfg.StageBudget, err, key)
	} else {
		ae.msg = "the engine is unavailable for this event (breaker open); nothing was changed; retry with Idempotency-Key " + key
	}
	ae.idemKey = key
	return ae
}

func replyOf(st wire.Stage) StageReply {
	return StageReply{Event: st.Event, Stage: st.Key, V: st.V, TS: st.TS, Target: (*producer.Target)(st.Target)}
}

func (s *Server) getEvent(r *http.Request) (any, error) {
	event := r.PathValue("event")
	recent, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]wire.Stage, error) { return s.eng.Recent(ctx, event, 1) })
	if err != nil {
		return nil, err
	}
	if len(recent) == 0 {
		return nil, errf(http.StatusNotFound, "not_found", "event %s has no stage yet", event)
	}
	return replyOf(recent[0]), nil
}
