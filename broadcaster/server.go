package broadcaster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sony/gobreaker/v2"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Engine is what the broadcaster needs from the engine.
type Engine interface {
	SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error)
	Recent(ctx context.Context, event string, n int) ([]wire.Stage, error)
	Delivery(ctx context.Context, event string, v uint64) ([]engine.ProxyDelivery, error)
	PutStageMap(ctx context.Context, event string, raw []byte, updatedMS int64) (uint64, error)
	SetLive(ctx context.Context, event string, live bool) error
	Snapshot(ctx context.Context, event string) (engine.Snapshot, error)
	Notify(ctx context.Context, w engine.NoteWrite) (engine.NoteResult, error)
	NoteReport(ctx context.Context, id string) (engine.NoteReport, error)
	// The console's reads.
	Events(ctx context.Context, limit int) ([]engine.EventSummary, error)
	PutAudit(ctx context.Context, event string, a engine.AuditEntry) error
	Audit(ctx context.Context, event string, n int) ([]engine.AuditEntry, error)
	// Armed stages.
	Arm(ctx context.Context, req engine.ArmRequest) (wire.Stage, error)
	Schedules(ctx context.Context, event string) ([]wire.Stage, error)
	CancelSchedule(ctx context.Context, event, id string, v uint64) error
	DueSchedules(ctx context.Context, nowMS int64, limit int) ([]engine.ScheduleRef, error)
	FireSchedule(ctx context.Context, event, id string) (wire.Stage, error)
}

// Config configures the broadcaster. Zero values are the documented defaults.
type Config struct {
	// Token is a single producer bearer token, named "default", allowed every
	// event. Token and Producers may be combined; at least one token is required.
	// Every token must pass CheckTokenStrength.
	Token string
	// Producers are named tokens, each limited to its event patterns.
	Producers []Producer
	// PublicReads lets GET /v1/events/{event} through without a token (the current
	// stage is what every device receives anyway). The report always needs the token.
	PublicReads bool
	// EngineTimeout bounds each engine call. Default 2s.
	EngineTimeout time.Duration
	// StageBudget bounds how long one stage-change request may take in all: it
	// retries a failing engine (a Redis master failing over) with jittered
	// backoff, under one Idempotency-Key, until then. Default 4.5s.
	StageBudget time.Duration
	// BreakerFailures consecutive engine failures open the breaker; it stays open
	// BreakerOpenFor before letting a probe through. Defaults 5, 5s.
	BreakerFailures uint32
	BreakerOpenFor  time.Duration
	// ReportStaleAfter: a proxy that has not reported on an event for this long no
	// longer counts toward "devices connected" (its sends still count). Default 30s.
	ReportStaleAfter time.Duration
	// MaxMapBytes is the largest stage map accepted (413 above). Default 1 MiB.
	MaxMapBytes int64
	// ProducerRate and ProducerBurst bound each producer's requests per second
	// (429 rate_limited past them, with Retry-After). Defaults
	// DefaultProducerRate and twice that; a negative ProducerRate turns the
	// limit off.
	ProducerRate  float64
	ProducerBurst int
	// Lanes size the notification lanes, by wire.Priority; zero fields take
	// DefaultLanes.
	Lanes [wire.NumPriorities]LaneConfig
	// OnAudit, when set, is called with every audit entry (stage changes,
	// schedules, map and window writes, notifications accepted; event "" for
	// notifications): the analytics stream. It must not block.
	OnAudit func(event string, a engine.AuditEntry)
	// OnNote, when set, is called with each notification stored (not for
	// replays of an idempotency key): the analytics stream's accepted counts
	// per type and priority. It must not block.
	OnNote     func(NoteAccepted)
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Validate fills defaults and checks the config.
func (c *Config) Validate() error {
	if c.Token != "" {
		c.Producers = append(append([]Producer(nil), c.Producers...), Producer{Name: "default", Token: c.Token})
		c.Token = ""
	}
	if _, err := newProducerSet(c.Producers); err != nil {
		return err
	}
	if c.EngineTimeout <= 0 {
		c.EngineTimeout = 2 * time.Second
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	if c.BreakerOpenFor <= 0 {
		c.BreakerOpenFor = 5 * time.Second
	}
	if c.ReportStaleAfter <= 0 {
		c.ReportStaleAfter = 30 * time.Second
	}
	if c.StageBudget <= 0 {
		c.StageBudget = 4500 * time.Millisecond
	}
	if c.MaxMapBytes <= 0 {
		c.MaxMapBytes = wire.DefaultMaxMapSize
	}
	if c.ProducerRate == 0 {
		c.ProducerRate = DefaultProducerRate
	}
	if c.ProducerBurst <= 0 {
		c.ProducerBurst = int(2 * DefaultProducerRate)
	}
	if err := validateLanes(&c.Lanes); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Server is the producer API.
type Server struct {
	cfg       Config
	eng       Engine
	log       *slog.Logger
	producers atomic.Pointer[producerSet]
	breakers  *bulkheads
	reg       *prometheus.Registry
	m         metrics
	lanes     *lanes
	nm        noteMetrics
	stop      context.CancelFunc
}

type metrics struct {
	changes  *prometheus.CounterVec
	requests *prometheus.CounterVec
	engErr   prometheus.Counter
}

// New validates cfg and returns a broadcaster.
func New(cfg Config, eng Engine) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, eng: eng, log: cfg.Logger.With("component", "broadcaster")}
	if err := s.SetProducers(cfg.Producers); err != nil {
		return nil, err
	}
	reg := cfg.Registerer
	if reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg = s.reg
	}
	s.m = metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "stage_changes_total", Help: "Stage change requests by result (created, replayed)."}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "requests_total", Help: "Producer API requests by route and status code."}, []string{"route", "code"}),
		engErr: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "engine_errors_total", Help: "Failed engine calls."}),
	}
	s.breakers = newBulkheads(cfg, s)
	reg.MustRegister(s.m.changes, s.m.requests, s.m.engErr, s.breakers.collector())
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.lanes = s.startLanes(ctx)
	go s.fireLoop(ctx)
	s.nm = newNoteMetrics(reg, s.lanes)
	return s, nil
}

// Close stops the notification lanes' workers. Serve nothing after it.
func (s *Server) Close() { s.stop() }

// Registry returns the broadcaster's own registry (nil if Config.Registerer was set).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Handler serves the producer API, /healthz, /readyz and (own registry) /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/events/{event}/stage", s.route("set_stage", true, s.setStage))
	mux.HandleFunc("GET /v1/events/{event}", s.route("get_event", !s.cfg.PublicReads, s.getEvent))
	mux.HandleFunc("GET /v1/events/{event}/report", s.route("report", true, s.report))
	mux.HandleFunc("PUT /v1/events/{event}/stages", s.route("put_stage_map", true, s.putStageMap))
	mux.HandleFunc("GET /v1/events/{event}/stages", s.route("get_stage_map", !s.cfg.PublicReads, s.getStageMap))
	mux.HandleFunc("PUT /v1/events/{event}/window", s.route("set_window", true, s.setWindow))
	mux.HandleFunc("POST /v1/notifications", s.route("notify", true, s.notify))
	mux.HandleFunc("GET /v1/whoami", s.route("whoami", true, s.whoami))
	mux.HandleFunc("POST /v1/events/{event}/schedule", s.route("arm_stage", true, s.armStage))
	mux.HandleFunc("GET /v1/events/{event}/schedule", s.route("list_schedules", true, s.listSchedules))
	mux.HandleFunc("DELETE /v1/events/{event}/schedule/{id}", s.route("cancel_schedule", true, s.cancelSchedule))
	mux.HandleFunc("GET /v1/events", s.route("list_events", true, s.listEvents))
	mux.HandleFunc("GET /v1/events/{event}/audit", s.route("audit", true, s.auditTrail))
	mux.Handle("GET /console", consoleHandler())
	mux.Handle("GET /console/", consoleHandler())
	mux.HandleFunc("GET /v1/notifications/{id}/report", s.route("note_report", true, s.noteReport))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.breakers.reads.State() == gobreaker.StateOpen {
			http.Error(w, "engine unavailable (reads breaker open)", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	if s.reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no route "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// apiError is an error with an HTTP status and a wire code.
type apiError struct {
	status int
	code   string
	msg    string
	// idemKey, when set, is returned as the Idempotency-Key header: the key
	// to retry with (also for requests that sent none).
	idemKey string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

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

// StageRequest is the body of POST /v1/events/{event}/stage.
type StageRequest struct {
	Stage  string       `json:"stage"`
	Target *wire.Target `json:"target,omitempty"`
	// Priority (extension): "critical" makes proxies write this change before
	// other frames (notes, other events' stages); "" or "normal" otherwise.
	Priority string `json:"priority,omitempty"`
	// Paced (extension): proxies release the change in waves at their
	// --paced-rate, slower while the prefetch tier sheds; for a stage devices
	// do not hold, so their fetches do not come at once.
	Paced bool `json:"paced,omitempty"`
}

// StageReply is the reply of a stage change and of GET /v1/events/{event}.
type StageReply struct {
	Event  string       `json:"event"`
	Stage  string       `json:"stage"`
	V      uint64       `json:"v"`
	TS     int64        `json:"ts"`
	Target *wire.Target `json:"target,omitempty"`
}

const maxStageBody = 16 << 10

// DefaultProducerRate is each producer's request rate bound (per second): far
// above what a console or a scheduler sends, a cap on a runaway script.
const DefaultProducerRate = 2000

// AutoKeyTTL is how long the key made up for a keyless stage change is kept:
// long enough for the producer to retry with it after an outcome_unknown,
// short enough that keyless traffic keeps no 24 h record per request.
const AutoKeyTTL = 10 * time.Minute

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
	if err := checkStageFields(req.Stage, req.Target, req.Priority); err != nil {
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
	res, err := s.changeStage(r.Context(), engine.SetRequest{Event: event, Key: req.Stage, Target: req.Target, TS: ts, IdempotencyKey: key, KeyTTL: keyTTL,
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

// retrying runs f through breaker cb, retrying a failing engine with
// full-jitter backoff (50 ms x 2^attempt, capped by what is left, at most
// 400 ms) until StageBudget is spent. f must be safe to repeat (an idempotency
// key, a note id). The retries are one outcome for the breaker, so a master
// failing over does not open it.
func retrying[T any](s *Server, ctx context.Context, cb *gobreaker.CircuitBreaker[any], what string, attrs []any, f func(context.Context) (T, error)) (T, error) {
	deadline := s.cfg.Now().Add(s.cfg.StageBudget)
	out, err := cb.Execute(func() (any, error) {
		var res T
		var err error
		for attempt := 0; ; attempt++ {
			left := deadline.Sub(s.cfg.Now())
			actx, cancel := context.WithTimeout(ctx, min(s.cfg.EngineTimeout, left))
			res, err = f(actx)
			cancel()
			if err == nil || errors.Is(err, engine.ErrIdempotencyConflict) || ctx.Err() != nil {
				return res, err
			}
			s.m.engErr.Inc()
			wait := time.Duration(rand.Int64N(int64(min(400*time.Millisecond, 50*time.Millisecond<<min(attempt, 4))) + 1))
			if left = deadline.Sub(s.cfg.Now()); wait+50*time.Millisecond > left {
				return res, err
			}
			s.log.Warn(what+" failed; retrying with the same key", append(attrs, "attempt", attempt+1, "in", wait.String(), "err", err)...)
			select {
			case <-ctx.Done():
				return res, err
			case <-time.After(wait):
			}
		}
	})
	if out == nil {
		var zero T
		return zero, err
	}
	return out.(T), err
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
	return StageReply{Event: st.Event, Stage: st.Key, V: st.V, TS: st.TS, Target: st.Target}
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

// Report is the merged delivery report of one version.
type Report struct {
	Event string `json:"event"`
	V     uint64 `json:"v"`
	Stage string `json:"stage,omitempty"`
	TS    int64  `json:"ts,omitempty"`
	// Devices subscribed to the event now (proxies that reported recently).
	Devices int64  `json:"devices"`
	Sent    uint64 `json:"sent"`
	Acked   uint64 `json:"acked"`
	// SentPct and AckedPct are of max(devices, sent).
	SentPct  float64 `json:"sent_pct"`
	AckedPct float64 `json:"acked_pct"`
	// SentMS: time from ts until 50/90/99/100 % of the devices had been sent the
	// version (upper bound of the histogram bucket); null while not reached.
	SentMS       map[string]*int64 `json:"sent_ms"`
	Proxies      int               `json:"proxies"`
	StaleProxies int               `json:"stale_proxies"`
	// PerProxy (extension) is each proxy's share, for the console.
	PerProxy []ProxyReport `json:"per_proxy"`
}

// ProxyReport is one proxy's figures for the version.
type ProxyReport struct {
	Proxy   string            `json:"proxy"`
	Devices int64             `json:"devices"`
	Sent    uint64            `json:"sent"`
	Acked   uint64            `json:"acked"`
	Stale   bool              `json:"stale,omitempty"`
	SentMS  map[string]*int64 `json:"sent_ms"`
}

func (s *Server) report(r *http.Request) (any, error) {
	event := r.PathValue("event")
	recent, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]wire.Stage, error) {
		return s.eng.Recent(ctx, event, engine.DefaultLogLen)
	})
	if err != nil {
		return nil, err
	}
	if len(recent) == 0 {
		return nil, errf(http.StatusNotFound, "not_found", "event %s has no stage yet", event)
	}
	v := recent[len(recent)-1].V
	if q := r.URL.Query().Get("v"); q != "" {
		v, err = strconv.ParseUint(q, 10, 64)
		if err != nil || v == 0 {
			return nil, errf(http.StatusBadRequest, "bad_request", "v must be an integer > 0, not %q", q)
		}
	}
	rep := Report{Event: event, V: v}
	for _, st := range recent {
		if st.V == v {
			rep.Stage, rep.TS = st.Key, st.TS
		}
	}
	pds, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]engine.ProxyDelivery, error) { return s.eng.Delivery(ctx, event, v) })
	if err != nil {
		return nil, err
	}
	return mergeReport(rep, pds, s.cfg.Now().UnixMilli()-s.cfg.ReportStaleAfter.Milliseconds()), nil
}

// mergeReport sums the proxies' figures and computes the time-to-percent
// thresholds from the merged latency buckets.
func mergeReport(rep Report, pds []engine.ProxyDelivery, freshAfterMS int64) Report {
	var buckets []engine.Bucket
	rep.PerProxy = []ProxyReport{}
	for _, pd := range pds {
		rep.Proxies++
		pr := ProxyReport{Proxy: pd.Proxy, Sent: pd.Version.Sent, Acked: pd.Version.Acked}
		if pd.AtMS >= freshAfterMS {
			rep.Devices += pd.Devices
			pr.Devices = pd.Devices
		} else {
			rep.StaleProxies++
			pr.Stale = true
		}
		rep.Sent += pd.Version.Sent
		rep.Acked += pd.Version.Acked
		buckets = append(buckets, pd.Version.Latency...)
		pr.SentMS = engine.Percentiles(append([]engine.Bucket(nil), pd.Version.Latency...), max(uint64(pr.Devices), pr.Sent))
		rep.PerProxy = append(rep.PerProxy, pr)
	}
	sort.Slice(rep.PerProxy, func(i, j int) bool { return rep.PerProxy[i].Proxy < rep.PerProxy[j].Proxy })
	denom := max(uint64(rep.Devices), rep.Sent)
	rep.SentMS = engine.Percentiles(buckets, denom)
	if denom == 0 {
		return rep
	}
	rep.SentPct = 100 * float64(rep.Sent) / float64(denom)
	rep.AckedPct = 100 * float64(rep.Acked) / float64(denom)
	return rep
}

// MapReply is the reply of PUT /v1/events/{event}/stages.
type MapReply struct {
	Event     string `json:"event"`
	Version   uint64 `json:"version"`
	Stages    int    `json:"stages"`
	Bytes     int    `json:"bytes"`
	UpdatedMS int64  `json:"updated"`
}

func (s *Server) putStageMap(r *http.Request) (any, error) {
	event := r.PathValue("event")
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, s.cfg.MaxMapBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "stage map larger than %d bytes", s.cfg.MaxMapBytes)
		}
		return nil, errf(http.StatusBadRequest, "bad_request", "reading body: %v", err)
	}
	m, err := wire.ParseStageMap(raw)
	if err != nil {
		return nil, errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	now := s.cfg.Now().UnixMilli()
	v, err := call(s, s.breakers.maps, r, func(ctx context.Context) (uint64, error) { return s.eng.PutStageMap(ctx, event, raw, now) })
	if err != nil {
		return nil, err
	}
	s.audit(r, "put_stage_map", "version", v, "stages", len(m.Stages), "bytes", len(raw), "result", "stored")
	s.trail(r, engine.AuditEntry{Action: "put_stage_map", V: v, Result: "stored", Detail: fmt.Sprintf("%d stages, %d bytes", len(m.Stages), len(raw))})
	return MapReply{Event: event, Version: v, Stages: len(m.Stages), Bytes: len(raw), UpdatedMS: now}, nil
}

// StoredMap is the reply of GET /v1/events/{event}/stages.
type StoredMap struct {
	Event     string          `json:"event"`
	Version   uint64          `json:"version"`
	UpdatedMS int64           `json:"updated"`
	Map       json.RawMessage `json:"map"`
}

func (s *Server) getStageMap(r *http.Request) (any, error) {
	event := r.PathValue("event")
	snap, err := call(s, s.breakers.reads, r, func(ctx context.Context) (engine.Snapshot, error) { return s.eng.Snapshot(ctx, event) })
	if err != nil {
		return nil, err
	}
	if snap.Map == nil {
		return nil, errf(http.StatusNotFound, "not_found", "event %s has no stage map", event)
	}
	return StoredMap{Event: event, Version: snap.Map.Version, UpdatedMS: snap.Map.UpdatedMS, Map: snap.Map.Raw}, nil
}

// WindowRequest is the body of PUT /v1/events/{event}/window.
type WindowRequest struct {
	Live *bool `json:"live"`
}

func (s *Server) setWindow(r *http.Request) (any, error) {
	event := r.PathValue("event")
	var req WindowRequest
	if err := decodeJSON(r, 1024, &req); err != nil {
		return nil, err
	}
	if req.Live == nil {
		return nil, errf(http.StatusBadRequest, "bad_request", `body needs "live": true or false`)
	}
	if _, err := call(s, s.breakers.maps, r, func(ctx context.Context) (struct{}, error) { return struct{}{}, s.eng.SetLive(ctx, event, *req.Live) }); err != nil {
		return nil, err
	}
	s.audit(r, "set_window", "live", *req.Live, "result", "stored")
	s.trail(r, engine.AuditEntry{Action: "set_window", Result: "stored", Detail: fmt.Sprintf("live=%v", *req.Live)})
	return map[string]any{"event": event, "live": *req.Live}, nil
}
