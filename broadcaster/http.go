package broadcaster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/sony/gobreaker/v2"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// The HTTP plumbing every route shares: authentication, the rate limit,
// decoding, engine calls through a breaker, the audit log.

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) { w.code = code; w.ResponseWriter.WriteHeader(code) }

func (s *Server) route(name string, auth bool, h func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer func() { s.m.requests.WithLabelValues(name, strconv.Itoa(sw.code)).Inc() }()
		var p *producerEntry
		if auth {
			if p = s.producer(r); p == nil {
				writeError(sw, http.StatusUnauthorized, "unauthorized", "missing or invalid producer token (Authorization: Bearer <token>)")
				return
			}
			if !p.limit.Allow() {
				sw.Header().Set("Retry-After", "1")
				writeError(sw, http.StatusTooManyRequests, "rate_limited", fmt.Sprintf("producer %s sends more than %.0f requests a second (burst %d); slow down", p.name, s.cfg.ProducerRate, s.cfg.ProducerBurst))
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), producerKey{}, p))
		}
		ev := r.PathValue("event")
		eventRoute := strings.Contains(r.Pattern, "{event}")
		if err := wire.CheckID("event", ev); eventRoute && err != nil {
			writeError(sw, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		if p != nil && eventRoute && !p.events.Match(ev) {
			s.log.Warn("audit", "producer", p.name, "route", name, "event", ev, "result", "forbidden")
			writeError(sw, http.StatusForbidden, "forbidden", "producer "+p.name+" may not act on event "+ev)
			return
		}
		out, err := h(r)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = s.engineError(err)
			}
			if ae.status == http.StatusServiceUnavailable {
				sw.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(5)))
			}
			if ae.idemKey != "" {
				sw.Header().Set("Idempotency-Key", ae.idemKey)
			}
			if ae.retryAfter > 0 {
				sw.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
			}
			writeError(sw, ae.status, ae.code, ae.msg)
			return
		}
		sw.Header().Set("Content-Type", "application/json")
		sw.Header().Set("Cache-Control", "no-store")
		if sr, ok := out.(statusReply); ok {
			sw.WriteHeader(sr.status)
			out = sr.body
		}
		_ = json.NewEncoder(sw).Encode(out)
	}
}

type producerKey struct{}

// producer returns the producer whose token the request carries, or nil. The
// lookup is by SHA-256 of the token: timing can tell nothing about a token.
func (s *Server) producer(r *http.Request) *producerEntry {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return nil
	}
	return s.producers.Load().byHash[sha256.Sum256([]byte(strings.TrimSpace(tok)))]
}

// audit logs one producer action: who (the token's name, never the token),
// what, on which event, and the outcome.
func (s *Server) audit(r *http.Request, action string, attrs ...any) {
	name := "anonymous"
	if p, ok := r.Context().Value(producerKey{}).(*producerEntry); ok {
		name = p.name
	}
	s.log.Info("audit", append([]any{"producer", name, "action", action, "event", r.PathValue("event")}, attrs...)...)
}

// call runs an engine call through breaker cb with the engine timeout.
func call[T any](s *Server, cb *gobreaker.CircuitBreaker[any], r *http.Request, f func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	out, err := cb.Execute(func() (any, error) {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.EngineTimeout)
		defer cancel()
		out, err := f(ctx)
		if err != nil && engine.Usable(err) {
			s.log.Warn("engine skipped undecodable entries", "err", err)
			err = nil // partial history: the rest is good (see engine.SkippedError)
		}
		return out, err
	})
	if err != nil {
		if !engine.Refused(err) {
			s.m.engErr.Inc()
		}
		if out == nil {
			return zero, err
		}
	}
	return out.(T), err
}

func decodeJSON(r *http.Request, limit int64, dst any) error {
	body := http.MaxBytesReader(nil, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, "too_large", "body larger than %d bytes", limit)
		}
		return errf(http.StatusBadRequest, "bad_request", "invalid JSON body: %v", err)
	}
	if dec.More() {
		return errf(http.StatusBadRequest, "bad_request", "body has data after the JSON object")
	}
	return nil
}
