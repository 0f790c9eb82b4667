package broadcaster

import (
	"context"
	"embed"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// The producer console: static assets embedded in the binary, served at
// /console, speaking only the producer API (plus the read endpoints below).
// The page holds no secret: the producer pastes a token, kept in the tab's
// sessionStorage and sent as Authorization on each call.

//go:embed console
var consoleFS embed.FS

func consoleHandler() http.Handler {
	sub, err := fs.Sub(consoleFS, "console")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The page never embeds data: no caching surprises, no referrer leaks,
		// no framing, scripts only from this origin.
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		switch r.URL.Path {
		case "/console", "/console/":
			r = r.Clone(r.Context())
			r.URL.Path = "/"
		default:
			r = r.Clone(r.Context())
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/console")
		}
		files.ServeHTTP(w, r)
	})
}

// Whoami is the reply of GET /v1/whoami: the producer the token names.
type Whoami struct {
	Producer string   `json:"producer"`
	Events   []string `json:"events,omitempty"` // patterns; empty: every event
}

func (s *Server) whoami(r *http.Request) (any, error) {
	p, _ := r.Context().Value(producerKey{}).(*producerEntry)
	if p == nil {
		return nil, errf(http.StatusUnauthorized, "unauthorized", "no producer")
	}
	return Whoami{Producer: p.name, Events: p.events}, nil
}

// EventItem is one event of GET /v1/events.
type EventItem struct {
	engine.EventSummary
	Devices int64 `json:"devices"` // connected now, by the proxies' reports
}

// maxListed bounds GET /v1/events.
const maxListed = 200

func (s *Server) listEvents(r *http.Request) (any, error) {
	limit := 50
	if q := r.URL.Query().Get("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > maxListed {
			return nil, errf(http.StatusBadRequest, "bad_request", "limit must be 1 to %d", maxListed)
		}
		limit = n
	}
	p, _ := r.Context().Value(producerKey{}).(*producerEntry)
	evs, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]engine.EventSummary, error) { return s.eng.Events(ctx, limit) })
	if err != nil {
		return nil, err
	}
	fresh := s.cfg.Now().UnixMilli() - s.cfg.ReportStaleAfter.Milliseconds()
	out := make([]EventItem, 0, len(evs))
	for _, e := range evs {
		if p != nil && !p.events.Match(e.Event) {
			continue // a producer sees only its events
		}
		item := EventItem{EventSummary: e}
		if e.Current != nil {
			pds, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]engine.ProxyDelivery, error) {
				return s.eng.Delivery(ctx, e.Event, e.Current.V)
			})
			if err == nil {
				for _, pd := range pds {
					if pd.AtMS >= fresh {
						item.Devices += pd.Devices
					}
				}
			}
		}
		out = append(out, item)
	}
	return map[string]any{"events": out}, nil
}

func (s *Server) auditTrail(r *http.Request) (any, error) {
	event := r.PathValue("event")
	n := 50
	if q := r.URL.Query().Get("limit"); q != "" {
		v, err := strconv.Atoi(q)
		if err != nil || v < 1 || v > engine.MaxAudit {
			return nil, errf(http.StatusBadRequest, "bad_request", "limit must be 1 to %d", engine.MaxAudit)
		}
		n = v
	}
	entries, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]engine.AuditEntry, error) { return s.eng.Audit(ctx, event, n) })
	if err != nil {
		return nil, err
	}
	if entries == nil {
		entries = []engine.AuditEntry{}
	}
	return map[string]any{"event": event, "audit": entries}, nil
}

// trail stores an audit entry for the request's event (best effort: the audit
// log line is already written; a store failure is logged).
func (s *Server) trail(r *http.Request, a engine.AuditEntry) {
	event := r.PathValue("event")
	a.AtMS = s.cfg.Now().UnixMilli()
	a.Producer = "anonymous"
	if p, ok := r.Context().Value(producerKey{}).(*producerEntry); ok {
		a.Producer = p.name
	}
	if s.cfg.OnAudit != nil {
		s.cfg.OnAudit(event, a) // the analytics stream: never waits
	}
	if event == "" {
		return
	}
	put := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), min(s.cfg.EngineTimeout, 500*time.Millisecond))
		defer cancel()
		if err := s.eng.PutAudit(ctx, event, a); err != nil {
			s.log.Warn("audit entry not stored", "event", event, "action", a.Action, "err", err)
		}
	}
	if a.Result != "error" {
		put()
		return
	}
	// A failed request's entry goes to the engine that just failed: written
	// in the background, so that the producer's 503 comes within the stage
	// budget and not the audit write's timeout later; at most
	// maxFailedTrails at once, the rest only logged.
	select {
	case s.failedTrails <- struct{}{}:
		go func() {
			defer func() { <-s.failedTrails }()
			put()
		}()
	default:
		s.log.Warn("audit entry of a failed request not stored: too many in flight", "event", event, "action", a.Action, "detail", a.Detail)
	}
}

// maxFailedTrails bounds the failed requests' audit writes in flight.
const maxFailedTrails = 64

func targetDetail(t *wire.Target, prio string) string {
	var parts []string
	if !t.IsZero() {
		if len(t.Platforms) > 0 {
			parts = append(parts, "platforms "+strings.Join(t.Platforms, ","))
		}
		if len(t.Segments) > 0 {
			parts = append(parts, "segments "+strings.Join(t.Segments, ","))
		}
	}
	if prio == "critical" {
		parts = append(parts, "critical")
	}
	return strings.Join(parts, "; ")
}
