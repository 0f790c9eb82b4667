package graph

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/prefetch"
)

// ServerConfig configures a prefetch server: cache, shedding and GraphQL limits.
type ServerConfig struct {
	Cache    prefetch.Config
	Shed     prefetch.ShedConfig
	GraphQL  Config
	Identity prefetch.IdentityConfig
	// OnPull is the inbox reader's hook (prefetch.InboxReader.OnPull).
	OnPull func(noteType, priority string)
}

// Server is the prefetch API: POST/GET /graphql, GET /v1/prefetch/{event} (plain
// JSON), /healthz, /readyz, /metrics.
type Server struct {
	Cache   *prefetch.Cache
	Shedder *prefetch.Shedder
	GraphQL *Handler
	ident   prefetch.IdentityConfig
	reg     *prometheus.Registry
}

// NewServer builds a prefetch server over store with its own metrics registry.
func NewServer(cfg ServerConfig, store prefetch.Store) (*Server, error) {
	if err := cfg.Identity.Validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Cache.Registerer, cfg.GraphQL.Registerer = reg, reg
	cache, err := prefetch.NewCache(cfg.Cache, store)
	if err != nil {
		return nil, err
	}
	shed, err := prefetch.NewShedder(cfg.Shed, reg)
	if err != nil {
		return nil, err
	}
	if is, ok := store.(prefetch.InboxStore); ok && cfg.GraphQL.Inbox == nil {
		pulls := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "inbox_pulls_total",
			Help: "Inbox pulls (the inbox query) by result (ok, error)."}, []string{"result"})
		reg.MustRegister(pulls)
		cfg.GraphQL.Inbox = &prefetch.InboxReader{Store: is, Pulls: pulls, OnPull: cfg.OnPull}
	}
	h, err := New(cfg.GraphQL, cache, shed)
	if err != nil {
		return nil, err
	}
	return &Server{Cache: cache, Shedder: shed, GraphQL: h, ident: cfg.Identity, reg: reg}, nil
}

// Registry is the server's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Handler mounts every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/graphql", s.ident.Identify(s.GraphQL))
	mux.Handle("GET /v1/prefetch/{event}", s.ident.Identify(prefetch.PlainHandler(s.Cache, s.Shedder)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	// Ready even when the store is down: the cache serves stale maps then.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ready\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

// LoadPublisher stores a server's load where proxies read it (the engines).
type LoadPublisher interface {
	PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error
}

// PublishLoad reports this server's shedding level every interval until ctx
// ends, so proxies slow paced broadcasts while the prefetch tier sheds.
func (s *Server) PublishLoad(ctx context.Context, pub LoadPublisher, id string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = pub.PutProxyLoad(pctx, engine.ProxyLoad{ID: id, Tier: "prefetch", Shedding: s.Shedder.Level(), AtMS: time.Now().UnixMilli()})
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
