package broadcaster

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"

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
	NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome
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
	ahead     *aheadMetrics // ahead.go: what an autoscaler scales on
	// failedTrails bounds the audit entries of failed requests written in
	// the background (console.go, trail).
	failedTrails chan struct{}
	stop         context.CancelFunc
}

type metrics struct {
	changes  *prometheus.CounterVec
	requests *prometheus.CounterVec
	engErr   prometheus.Counter
}

// New fills cfg's zero fields from DefaultConfig, validates it and returns a
// broadcaster.
func New(cfg Config, eng Engine) (*Server, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, eng: eng, log: cfg.Logger.With("component", "broadcaster"), failedTrails: make(chan struct{}, maxFailedTrails)}
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
	s.ahead = newAheadMetrics(reg)
	go s.aheadLoop(ctx)
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
	mux.HandleFunc("POST /v1/notifications:batch", s.route("notify_batch", true, s.notifyBatch))
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
