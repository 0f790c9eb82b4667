package prefetch

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/stagecast/stagecast/internal/wire"
)

// PriorityHeader lets a device say its prefetch is critical (a live event it is
// watching); events whose window the producer switched on are critical anyway.
// The header is believed only from a request with a valid device token or from
// a trusted network (see IdentityConfig); from anyone else it is ignored.
const PriorityHeader = "X-Stagecast-Priority"

// RequestPriority is critical when a trusted request says so or any of entries
// is in its live window.
func RequestPriority(r *http.Request, entries ...*Entry) Priority {
	if trusted(r) && strings.EqualFold(r.Header.Get(PriorityHeader), "critical") {
		return Critical
	}
	for _, e := range entries {
		if e != nil && e.Live {
			return Critical
		}
	}
	return Normal
}

// CacheControl is the Cache-Control of a prefetch response with a ttl-second
// lifetime: private, so a shared cache (a CDN, a corporate proxy) cannot freeze
// one jittered TTL and serve it to every device behind it.
func CacheControl(ttl int) string {
	return "private, max-age=" + strconv.Itoa(ttl)
}

// Shed answers a shed request: 503 with a jittered Retry-After.
func Shed(w http.ResponseWriter, c *Cache, s *Shedder, reason string) {
	w.Header().Set("Retry-After", strconv.Itoa(c.RetryAfterSeconds(s.RetryAfter())))
	WriteError(w, http.StatusServiceUnavailable, "overloaded", "prefetch shed under load ("+reason+"): retry after Retry-After")
}

// WriteError writes {"error":{"code":...,"msg":...}}.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "msg": msg}})
}

// StagePayload is one stage of a response.
type StagePayload struct {
	Key     string          `json:"key"`
	Payload json.RawMessage `json:"payload"`
	// Digest (extension) is the key's wire.StageDigest: stage frames carry the
	// same value, so a device knows whether what it holds is current.
	Digest string `json:"digest"`
}

// View is one event as a device prefetches it: the same fields as the GraphQL
// liveEvent object.
type View struct {
	ID                  string         `json:"id"`
	Current             *CurrentStage  `json:"current"`
	Stages              []StagePayload `json:"stages"`
	TTLSeconds          int            `json:"ttlSeconds"`
	RefreshAfterSeconds int            `json:"refreshAfterSeconds"`
	Stale               bool           `json:"stale,omitempty"`
}

// CurrentStage is the event's current stage in a View.
type CurrentStage struct {
	Key string `json:"key"`
	V   uint64 `json:"v"`
	TS  int64  `json:"ts"`
}

// Stages returns e's payloads for segment, sorted by stage key.
func (e *Entry) Stages(segment string) []StagePayload {
	if e.Map == nil {
		return []StagePayload{}
	}
	out := make([]StagePayload, 0, len(e.Keys))
	for _, k := range e.Keys {
		p, _ := e.Map.Payload(k, segment)
		out = append(out, StagePayload{Key: k, Payload: p, Digest: e.Digests[k]})
	}
	return out
}

// CurrentView returns e's current stage, or nil.
func (e *Entry) CurrentView() *CurrentStage {
	if e.Current == nil {
		return nil
	}
	return &CurrentStage{Key: e.Current.Key, V: e.Current.V, TS: e.Current.TS}
}

// PlainHandler serves GET /v1/prefetch/{event}?segment=S: the stage map as plain
// JSON, from the same cache, with the same hints, shedding and errors as GraphQL.
func PlainHandler(c *Cache, s *Shedder) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		event, segment := r.PathValue("event"), r.URL.Query().Get("segment")
		if err := wire.CheckID("event", event); err != nil {
			WriteError(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		if segment != "" && !wire.ValidID(segment) {
			WriteError(w, http.StatusBadRequest, "bad_request", wire.CheckID("segment", segment).Error())
			return
		}
		done, ok, reason := s.Admit(RequestPriority(r, c.Peek(event)))
		if !ok {
			Shed(w, c, s, reason)
			return
		}
		defer done()
		res, err := c.Get(r.Context(), event)
		switch {
		case errors.Is(err, ErrNotFound):
			WriteError(w, http.StatusNotFound, "not_found", "no stage map or stage for event "+event)
			return
		case err != nil:
			w.Header().Set("Retry-After", strconv.Itoa(c.RetryAfterSeconds(s.RetryAfter())))
			WriteError(w, http.StatusServiceUnavailable, "unavailable", "stage maps are unavailable right now")
			return
		}
		ttl, refresh := c.HintSeconds(res.Entry)
		v := View{ID: event, Current: res.CurrentView(), Stages: res.Stages(segment), TTLSeconds: ttl, RefreshAfterSeconds: refresh, Stale: res.Stale}
		b, err := json.Marshal(v)
		if err != nil {
			WriteError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", CacheControl(ttl))
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	}
}
