package broadcaster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/sony/gobreaker/v2"

	"github.com/stagecast/stagecast/internal/engine"
)

// Errors as the producer API answers them: typed refusals to statuses and
// wire codes, in one table.

// apiError is an error with an HTTP status and a wire code.
type apiError struct {
	status int
	code   string
	msg    string
	// idemKey, when set, is returned as the Idempotency-Key header: the key
	// to retry with (also for requests that sent none).
	idemKey string
	// retryAfter, when > 0, is the Retry-After header in seconds (429s).
	retryAfter int
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// refusals map the engine's typed refusals to the producer API's statuses and
// codes: one vocabulary for every handler (docs/protocol.md, producer errors).
var refusals = []struct {
	err    error
	status int
	code   string
}{
	{engine.ErrIdempotencyConflict, http.StatusConflict, "idempotency_conflict"},
	{engine.ErrScheduleConflict, http.StatusConflict, "idempotency_conflict"},
	{engine.ErrTooManySchedules, http.StatusConflict, "schedule_limit"},
	{engine.ErrScheduleChanged, http.StatusConflict, "conflict"},
	{engine.ErrScheduleNotFound, http.StatusNotFound, "not_found"},
	{engine.ErrNoteNotFound, http.StatusNotFound, "not_found"},
}

func (s *Server) engineError(err error) *apiError {
	for _, r := range refusals {
		if errors.Is(err, r.err) {
			return errf(r.status, r.code, "%v", r.err)
		}
	}
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return errf(http.StatusServiceUnavailable, "engine_unavailable", "the engine (Redis) is unavailable; nothing was changed; retry with the same Idempotency-Key")
	}
	s.log.Error("engine call failed", "err", err)
	return errf(http.StatusServiceUnavailable, "engine_unavailable", "engine call failed; nothing was changed; retry with the same Idempotency-Key")
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "msg": msg}})
}
