package graph

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	graphql "github.com/graph-gophers/graphql-go"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
)

// Config configures the GraphQL handler. Zero values are defaults.
type Config struct {
	// Inbox serves the inbox query (nil: the query answers UNAUTHENTICATED).
	Inbox *prefetch.InboxReader
	// MaxQueryLength in bytes. Default 4096.
	MaxQueryLength int
	// MaxDepth of a query. Default 6.
	MaxDepth int
	// IntrospectionDepth is the depth allowed to a query that selects only
	// introspection fields (see introspection.go): bounded by the schema, which
	// has no recursive data types. Default 16. IntrospectionSelections bounds
	// its selections after fragment expansion (the standard query expands to a
	// few hundred). Default 2000.
	IntrospectionDepth      int
	IntrospectionSelections int
	// NoIntrospection refuses introspection (__schema, __type) altogether
	// (--graphql-introspection=false). Default: allowed.
	NoIntrospection bool
	// MaxSelections after fragment expansion (aliases count). Default 200.
	MaxSelections int
	// MaxParallelism of resolvers per query. Default 4.
	MaxParallelism int
	// MaxBody of a POST, bytes. Default 16 KiB.
	MaxBody int64
	// QueryCacheSize: executed (query, operation, variables) kept. Default 1024.
	QueryCacheSize int
	// QueryCacheBytes bounds the bytes of cached responses (the oldest go first).
	// Default 64 MiB.
	QueryCacheBytes int
	// MaxCachedResponse: larger responses are not cached. Default 1 MiB.
	MaxCachedResponse int
	// MaxLiveEvents: liveEvent selections (aliases count) resolved per document;
	// the rest answer COST_LIMIT. Default 4.
	MaxLiveEvents int
	// MaxStageLists: stages selections resolved per document (each carries a whole
	// map's payloads; a device needs one); the rest answer COST_LIMIT. Default 1.
	MaxStageLists int
	// MaxResponseBytes: a response whose payloads would exceed it is refused with
	// RESPONSE_TOO_LARGE (before the payloads are encoded). Default 2 MiB.
	MaxResponseBytes int
	Registerer       prometheus.Registerer
}

// DefaultConfig returns the handler's documented defaults. New fills each
// zero field of its Config from it (package defaults), then validates.
func DefaultConfig() Config {
	return Config{MaxQueryLength: 4096, MaxDepth: 6, IntrospectionDepth: 16, IntrospectionSelections: 2000,
		MaxSelections: 200, MaxParallelism: 4, MaxBody: 16 << 10, QueryCacheSize: 1024, QueryCacheBytes: 64 << 20,
		MaxCachedResponse: 1 << 20, MaxLiveEvents: 4, MaxStageLists: 1, MaxResponseBytes: 2 << 20}
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing:
// every bound must be positive.
func (c *Config) Validate() error {
	for name, v := range map[string]int64{"MaxQueryLength": int64(c.MaxQueryLength), "MaxDepth": int64(c.MaxDepth),
		"IntrospectionDepth": int64(c.IntrospectionDepth), "IntrospectionSelections": int64(c.IntrospectionSelections),
		"MaxSelections": int64(c.MaxSelections), "MaxParallelism": int64(c.MaxParallelism), "MaxBody": c.MaxBody,
		"QueryCacheSize": int64(c.QueryCacheSize), "QueryCacheBytes": int64(c.QueryCacheBytes),
		"MaxCachedResponse": int64(c.MaxCachedResponse), "MaxLiveEvents": int64(c.MaxLiveEvents),
		"MaxStageLists": int64(c.MaxStageLists), "MaxResponseBytes": int64(c.MaxResponseBytes)} {
		if v <= 0 {
			return fmt.Errorf("graphql config: %s = %d must be > 0", name, v)
		}
	}
	return nil
}

// Handler serves POST and GET /graphql.
type Handler struct {
	cfg    Config
	schema *graphql.Schema
	intro  *graphql.Schema // introspection-only queries (nil: introspection off)
	cache  *prefetch.Cache
	shed   *prefetch.Shedder
	tmpl   *lru.Cache[[32]byte, *template] // key: SHA-256 of (operation, variables, query)
	bytes  atomic.Int64                    // bytes of the cached templates' bodies
	randMu sync.Mutex
	rnd    *rand.Rand
	qc     *prometheus.CounterVec
}

// template is one executed query: the response with sentinels, and what it read.
type template struct {
	body      []byte
	deps      []*dep // sorted by event
	errorOnly bool   // errors and no data: answered, never cached
}

// New builds the schema (it panics only on a schema bug, caught by tests).
func New(cfg Config, cache *prefetch.Cache, shed *prefetch.Shedder) (*Handler, error) {
	defaults.Fill(&cfg, DefaultConfig())
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root := &resolver{cache: cache, inbox: cfg.Inbox}
	opts := func(depth, selections int) []graphql.SchemaOpt {
		o := []graphql.SchemaOpt{graphql.MaxQueryLength(cfg.MaxQueryLength), graphql.MaxDepth(depth),
			graphql.MaxSelections(selections), graphql.MaxParallelism(cfg.MaxParallelism), graphql.UseFieldResolvers()}
		if cfg.NoIntrospection {
			o = append(o, graphql.RestrictIntrospection(func(context.Context) bool { return false }))
		}
		return o
	}
	schema, err := graphql.ParseSchema(schemaSDL, root, opts(cfg.MaxDepth, cfg.MaxSelections)...)
	if err != nil {
		return nil, fmt.Errorf("graph: schema: %w", err)
	}
	var intro *graphql.Schema
	if !cfg.NoIntrospection {
		if intro, err = graphql.ParseSchema(schemaSDL, root, opts(cfg.IntrospectionDepth, cfg.IntrospectionSelections)...); err != nil {
			return nil, fmt.Errorf("graph: schema: %w", err)
		}
	}
	h := &Handler{cfg: cfg, schema: schema, intro: intro, cache: cache, shed: shed,
		rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		qc: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "graph", Name: "query_cache_total",
			Help: "GraphQL requests by query-cache result: hit (no parse, no execution), miss, changed (an event's snapshot moved), uncacheable; sentinel_collision counts re-renders."}, []string{"result"})}
	t, err := lru.NewWithEvict(cfg.QueryCacheSize, func(_ [32]byte, t *template) { h.bytes.Add(-int64(len(t.body))) })
	if err != nil {
		return nil, err
	}
	h.tmpl = t
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(h.qc, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "graph",
			Name: "query_cache_bytes", Help: "Bytes of executed responses held by the query cache (bounded by QueryCacheBytes)."},
			func() float64 { return float64(h.bytes.Load()) }))
	}
	return h, nil
}

type request struct {
	Query         string         `json:"query"`
	OperationName string         `json:"operationName"`
	Variables     map[string]any `json:"variables"`
}

func gqlError(w http.ResponseWriter, status int, msg, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{{"message": msg, "extensions": map[string]string{"code": code}}}})
}

func (h *Handler) parse(w http.ResponseWriter, r *http.Request) (request, bool) {
	var req request
	switch r.Method {
	case http.MethodPost:
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, h.cfg.MaxBody))
		if err := dec.Decode(&req); err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				gqlError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", h.cfg.MaxBody), "BAD_REQUEST")
			} else {
				gqlError(w, http.StatusBadRequest, "request body is not a GraphQL JSON request: "+err.Error(), "BAD_REQUEST")
			}
			return req, false
		}
	case http.MethodGet:
		q := r.URL.Query()
		req.Query, req.OperationName = q.Get("query"), q.Get("operationName")
		if v := q.Get("variables"); v != "" {
			if err := json.Unmarshal([]byte(v), &req.Variables); err != nil {
				gqlError(w, http.StatusBadRequest, "variables is not a JSON object: "+err.Error(), "BAD_REQUEST")
				return req, false
			}
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		gqlError(w, http.StatusMethodNotAllowed, "use GET or POST", "BAD_REQUEST")
		return req, false
	}
	if strings.TrimSpace(req.Query) == "" {
		gqlError(w, http.StatusBadRequest, "no query", "BAD_REQUEST")
		return req, false
	}
	if len(req.Query) > h.cfg.MaxQueryLength {
		gqlError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("query longer than %d bytes", h.cfg.MaxQueryLength), "BAD_REQUEST")
		return req, false
	}
	return req, true
}

// ServeHTTP answers one GraphQL request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := h.parse(w, r)
	if !ok {
		return
	}
	vars, err := json.Marshal(req.Variables) // maps marshal with sorted keys: a canonical form
	if err != nil {
		gqlError(w, http.StatusBadRequest, "variables: "+err.Error(), "BAD_REQUEST")
		return
	}
	key := cacheKey(req.OperationName, vars, req.Query)
	t, cached := h.tmpl.Get(key)

	// Priority: any event the request names (variables, or what the cached
	// execution read) in its live window, or the device's own word.
	var peek []*prefetch.Entry
	for _, v := range req.Variables {
		if s, ok := v.(string); ok && wire.ValidID(s) {
			peek = append(peek, h.cache.Peek(s))
		}
	}
	if cached {
		for _, d := range t.deps {
			peek = append(peek, h.cache.Peek(d.event))
		}
	}
	done, ok, reason := h.shed.Admit(prefetch.RequestPriority(r, peek...))
	if !ok {
		prefetch.Shed(w, h.cache, h.shed, reason)
		return
	}
	defer done()

	if cached {
		if current, ok := h.check(r.Context(), t); ok {
			h.qc.WithLabelValues("hit").Inc()
			h.write(w, t, current)
			return
		}
		h.qc.WithLabelValues("changed").Inc()
	} else {
		h.qc.WithLabelValues("miss").Inc()
	}
	h.execute(w, r.Context(), key, req)
}

// check re-reads every event t depends on (a local cache hit while fresh) and
// reports whether all are still the snapshots t was rendered from.
func (h *Handler) check(ctx context.Context, t *template) ([]prefetch.Result, bool) {
	out := make([]prefetch.Result, len(t.deps))
	for i, d := range t.deps {
		res, err := h.cache.Get(ctx, d.event)
		if res.Entry == nil || res.Gen != d.gen || (err != nil && !errors.Is(err, prefetch.ErrNotFound)) {
			return nil, false
		}
		out[i] = res
	}
	return out, true
}

// maxRenders bounds the re-renders when a sentinel collides with payload bytes
// (each render draws fresh random sentinels; a repeat is practically impossible).
const maxRenders = 4

// cacheKey hashes what makes a response: a fixed 32 bytes per entry, whatever
// the size of the query and variables.
func cacheKey(op string, vars []byte, query string) [32]byte {
	hs := sha256.New()
	hs.Write([]byte(op))
	hs.Write([]byte{0})
	hs.Write(vars)
	hs.Write([]byte{0})
	hs.Write([]byte(query))
	var k [32]byte
	hs.Sum(k[:0])
	return k
}

// remember caches t, evicting the oldest templates while the cache holds more
// than QueryCacheBytes.
func (h *Handler) remember(key [32]byte, t *template) {
	if old, ok := h.tmpl.Peek(key); ok {
		h.tmpl.Remove(key) // its evict callback uncounts it
		_ = old
	}
	h.bytes.Add(int64(len(t.body)))
	h.tmpl.Add(key, t)
	for h.bytes.Load() > int64(h.cfg.QueryCacheBytes) {
		if _, _, ok := h.tmpl.RemoveOldest(); !ok {
			break
		}
	}
}

func (h *Handler) execute(w http.ResponseWriter, ctx context.Context, key [32]byte, req request) {
	var t *template
	var rd *render
	for attempt := 1; ; attempt++ {
		var err error
		if t, rd, err = h.render1(ctx, req); err != nil {
			gqlError(w, http.StatusInternalServerError, "encoding the response: "+err.Error(), "INTERNAL")
			return
		}
		if rd.unavailable || h.sentinelsSound(t) {
			break
		}
		h.qc.WithLabelValues("sentinel_collision").Inc()
		if attempt == maxRenders {
			gqlError(w, http.StatusInternalServerError, "the stage map's payloads collide with the response's hint placeholders", "INTERNAL")
			return
		}
	}
	current := make([]prefetch.Result, len(t.deps))
	for i, d := range t.deps {
		current[i] = prefetch.Result{Entry: d.entry, Stale: d.stale}
	}
	if rd.unavailable {
		// Nothing to serve, not even a stale copy: a clear 503, never cached.
		h.qc.WithLabelValues("uncacheable").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(h.cache.RetryAfterSeconds(h.shed.RetryAfter())))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(h.substitute(t, current))
		return
	}
	if len(t.body) > h.cfg.MaxResponseBytes {
		// The payload accounting in the resolvers keeps this from happening;
		// this is the last word on the bound.
		gqlError(w, http.StatusOK, fmt.Sprintf("response larger than %d bytes", h.cfg.MaxResponseBytes), "RESPONSE_TOO_LARGE")
		return
	}
	if len(t.body) <= h.cfg.MaxCachedResponse && !t.errorOnly && !rd.private {
		h.remember(key, t)
	} else {
		h.qc.WithLabelValues("uncacheable").Inc()
	}
	if rd.private {
		// One device's notes: no shared cache may keep or serve them.
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "private, no-store")
		_, _ = w.Write(h.substitute(t, current))
		return
	}
	h.write(w, t, current)
}

// render1 executes the query once, with fresh sentinels in place of the hints.
func (h *Handler) render1(ctx context.Context, req request) (*template, *render, error) {
	h.randMu.Lock()
	rd := &render{deps: map[string]*dep{}, rnd: rand.New(rand.NewPCG(h.rnd.Uint64(), h.rnd.Uint64())),
		maxEvents: h.cfg.MaxLiveEvents, maxLists: h.cfg.MaxStageLists, maxBytes: h.cfg.MaxResponseBytes}
	h.randMu.Unlock()
	schema := h.schema
	if h.intro != nil && onlyIntrospection(req.Query) {
		schema = h.intro // the standard introspection query nests past the data depth limit
	}
	resp := schema.Exec(context.WithValue(ctx, renderKey{}, rd), req.Query, req.OperationName, req.Variables)
	body, err := json.Marshal(resp)
	if err != nil {
		return nil, nil, err
	}
	t := &template{body: body, errorOnly: len(resp.Errors) > 0 && noData(resp.Data)}
	for _, d := range rd.deps {
		t.deps = append(t.deps, d)
	}
	slices.SortFunc(t.deps, func(a, b *dep) int { return strings.Compare(a.event, b.event) })
	return t, rd, nil
}

// noData reports whether a response's data is null or has only null fields.
func noData(data json.RawMessage) bool {
	var fields map[string]json.RawMessage
	if len(data) == 0 || json.Unmarshal(data, &fields) != nil {
		return true
	}
	for _, v := range fields {
		if string(v) != "null" {
			return false
		}
	}
	return true
}

// sentinelsSound checks each sentinel appears exactly as often as its field was
// resolved, so substituting it cannot touch payload bytes.
func (h *Handler) sentinelsSound(t *template) bool {
	for _, d := range t.deps {
		if bytes.Count(t.body, []byte(strconv.Itoa(int(d.ttlSent)))) != d.ttlCalls ||
			bytes.Count(t.body, []byte(strconv.Itoa(int(d.refSent)))) != d.refCalls {
			return false
		}
	}
	return true
}

// bufPool holds response buffers: a hot response is assembled without garbage.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// render writes t's body into buf with fresh jittered hints in place of the
// sentinels, in one pass, and returns the smallest TTL.
func (h *Handler) render(buf *bytes.Buffer, t *template, current []prefetch.Result) int {
	type sub struct{ from, to []byte }
	subs := make([]sub, 0, 2*len(t.deps))
	minTTL := 0
	for i, d := range t.deps {
		if current[i].Entry == nil || current[i].NotFound {
			continue
		}
		ttl, refresh := h.cache.HintSeconds(current[i].Entry)
		if minTTL == 0 || ttl < minTTL {
			minTTL = ttl
		}
		if d.ttlCalls > 0 {
			subs = append(subs, sub{strconv.AppendInt(nil, int64(d.ttlSent), 10), strconv.AppendInt(nil, int64(ttl), 10)})
		}
		if d.refCalls > 0 {
			subs = append(subs, sub{strconv.AppendInt(nil, int64(d.refSent), 10), strconv.AppendInt(nil, int64(refresh), 10)})
		}
	}
	body := t.body
	for len(body) > 0 {
		// Every sentinel starts with "-1": find the next one, then which.
		i := bytes.Index(body, []byte("-1"))
		if i < 0 {
			break
		}
		matched := false
		for _, s := range subs {
			if bytes.HasPrefix(body[i:], s.from) {
				buf.Write(body[:i])
				buf.Write(s.to)
				body = body[i+len(s.from):]
				matched = true
				break
			}
		}
		if !matched {
			buf.Write(body[:i+2])
			body = body[i+2:]
		}
	}
	buf.Write(body)
	return minTTL
}

func (h *Handler) substitute(t *template, current []prefetch.Result) []byte {
	var buf bytes.Buffer
	h.render(&buf, t, current)
	return buf.Bytes()
}

func (h *Handler) write(w http.ResponseWriter, t *template, current []prefetch.Result) {
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 4<<20 {
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	stale := false
	for _, res := range current {
		stale = stale || res.Stale
	}
	if stale {
		// Served from the last good copy while the store is unreachable.
		buf.WriteString(`{"extensions":{"stale":true},`)
		t = &template{body: t.body[1:], deps: t.deps}
	}
	ttl := h.render(buf, t, current)
	w.Header().Set("Content-Type", "application/json")
	if ttl > 0 {
		w.Header().Set("Cache-Control", prefetch.CacheControl(ttl))
	} else {
		w.Header().Set("Cache-Control", "no-store")
	}
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	_, _ = w.Write(buf.Bytes())
}
