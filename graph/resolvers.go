// Package graph is the GraphQL face of package prefetch: the schema
// (schema.graphql, embedded), its resolvers, and the HTTP handler for
// POST and GET /graphql with limits, Cache-Control and a query cache.
//
// graphql-go parses and validates every document it executes and has no
// prepared-query API, so the handler caches one level up: the executed response
// of each (query, operation, variables), with the snapshot generation of every
// event it read. While those generations hold, a request is answered from the
// cache without parsing, validating or executing. The per-response jittered
// hints are rendered as unique sentinel numbers and substituted per response.
//
// Concurrency: a Handler is safe for concurrent use. Resolvers may run in
// parallel (MaxParallelism); the per-request render state has its own lock.
//
// The package is the server of `stagecast prefetch` (and `stagecast dev`); its
// signatures name internal types, so it is not an API for other modules: they
// speak the protocol (docs/protocol.md) or use package broadcaster/producer.
package graph

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"

	graphql "github.com/graph-gophers/graphql-go"

	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
)

//go:embed schema.graphql
var schemaSDL string

// JSON is the JSON scalar: raw bytes out, any value in.
type JSON json.RawMessage

// ImplementsGraphQLType maps JSON to the schema's JSON scalar.
func (JSON) ImplementsGraphQLType(name string) bool { return name == "JSON" }

// UnmarshalGraphQL accepts any input value.
func (j *JSON) UnmarshalGraphQL(input any) error {
	b, err := json.Marshal(input)
	*j = b
	return err
}

// MarshalJSON writes the raw payload.
func (j JSON) MarshalJSON() ([]byte, error) { return []byte(j), nil }

// Int64 is the Int64 scalar.
type Int64 int64

// ImplementsGraphQLType maps Int64 to the schema's Int64 scalar.
func (Int64) ImplementsGraphQLType(name string) bool { return name == "Int64" }

// UnmarshalGraphQL accepts integers.
func (i *Int64) UnmarshalGraphQL(input any) error {
	switch v := input.(type) {
	case int32:
		*i = Int64(v)
	case int64:
		*i = Int64(v)
	case float64:
		*i = Int64(v)
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		*i = Int64(n)
		return err
	default:
		return fmt.Errorf("Int64: unsupported input %T", input)
	}
	return nil
}

// MarshalJSON writes the number.
func (i Int64) MarshalJSON() ([]byte, error) { return strconv.AppendInt(nil, int64(i), 10), nil }

// codedError is a GraphQL error with extensions.code.
type codedError struct {
	code, msg string
}

func (e *codedError) Error() string              { return e.msg }
func (e *codedError) Extensions() map[string]any { return map[string]any{"code": e.code} }
func notFound(event string) error                { return &codedError{"NOT_FOUND", "no live event " + event} }
func unavailable() error {
	return &codedError{"UNAVAILABLE", "stage maps are unavailable right now; retry later"}
}
func badID(err error) error { return &codedError{"BAD_REQUEST", err.Error()} }

var _ interface{ Extensions() map[string]any } = (*codedError)(nil)

// dep is one event a render read: which snapshot, and the sentinels standing in
// for its per-response hints.
type dep struct {
	event    string
	gen      uint64
	stale    bool
	entry    *prefetch.Entry
	ttlSent  int32
	refSent  int32
	ttlCalls int
	refCalls int
}

// render collects what one execution read.
type render struct {
	mu          sync.Mutex
	deps        map[string]*dep
	unavailable bool
	rnd         *rand.Rand

	// Cost accounting: resolved liveEvent and stages selections, and payload
	// bytes, against the handler's limits.
	events, lists, bytes          int
	maxEvents, maxLists, maxBytes int
	inboxes                       int
	private                       bool // per-device data: never cached
}

// spendInbox charges one inbox selection (at most one per query) and marks the
// response private.
func (r *render) spendInbox() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.private = true
	r.inboxes++
	if r.inboxes > 1 {
		return &codedError{"COST_LIMIT", "at most 1 inbox selection per query"}
	}
	return nil
}

func (r *render) markUnavailable() {
	r.mu.Lock()
	r.unavailable = true
	r.mu.Unlock()
}

// spend charges one liveEvent (lists == 0) or one stages list of n payload
// bytes; it returns the error to answer when a limit is passed.
func (r *render) spend(event bool, n int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if event {
		r.events++
		if r.events > r.maxEvents {
			return &codedError{"COST_LIMIT", fmt.Sprintf("at most %d liveEvent selections per query", r.maxEvents)}
		}
		return nil
	}
	r.lists++
	if r.lists > r.maxLists {
		return &codedError{"COST_LIMIT", fmt.Sprintf("at most %d stages selections per query", r.maxLists)}
	}
	if r.bytes+n > r.maxBytes {
		return &codedError{"RESPONSE_TOO_LARGE", fmt.Sprintf("the stages would make the response larger than %d bytes", r.maxBytes)}
	}
	r.bytes += n
	return nil
}

type renderKey struct{}

func renderFrom(ctx context.Context) *render {
	r, _ := ctx.Value(renderKey{}).(*render)
	return r
}

// sentinel draws a negative 10-digit int32 (not a plausible TTL, unlikely in payloads).
func (r *render) sentinel() int32 {
	return -int32(1_000_000_000 + r.rnd.Int32N(1_000_000_000))
}

func (r *render) use(res prefetch.Result) *dep {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.deps[res.Event]
	if d == nil {
		d = &dep{event: res.Event, gen: res.Gen, stale: res.Stale, entry: res.Entry, ttlSent: r.sentinel(), refSent: r.sentinel()}
		for d.refSent == d.ttlSent {
			d.refSent = r.sentinel()
		}
		r.deps[res.Event] = d
	}
	return d
}

// resolver is the root resolver.
// Inbox resolves the calling device's notifications. The response is private:
// never cached, here or by anyone on the way.
func (q *resolver) Inbox(ctx context.Context, args struct {
	After *string
	Limit *int32
}) (*inboxPage, error) {
	rd := renderFrom(ctx)
	if err := rd.spendInbox(); err != nil {
		return nil, err
	}
	claims, ok := prefetch.Device(ctx)
	if !ok || q.inbox == nil {
		return nil, &codedError{"UNAUTHENTICATED", prefetch.ErrNoInbox.Error()}
	}
	after, limit := "", 0
	if args.After != nil {
		after = *args.After
	}
	if args.Limit != nil {
		if *args.Limit < 1 || *args.Limit > prefetch.MaxInboxPage {
			return nil, &codedError{"BAD_REQUEST", fmt.Sprintf("limit must be 1 to %d", prefetch.MaxInboxPage)}
		}
		limit = int(*args.Limit)
	}
	page, err := q.inbox.Read(ctx, claims.Member, claims.Device, after, limit)
	if err != nil {
		if errors.Is(err, prefetch.ErrBadCursor) {
			return nil, badID(err)
		}
		if errors.Is(err, prefetch.ErrPullRate) {
			return nil, &codedError{"RATE_LIMITED", fmt.Sprintf("%v (at most %d pulls at once, then one every %.0f s)", err, prefetch.DefaultPullBurst, 1/prefetch.DefaultPullRate)}
		}
		rd.markUnavailable()
		return nil, unavailable()
	}
	return &inboxPage{page}, nil
}

type inboxPage struct{ p prefetch.InboxPage }

func (p *inboxPage) Notes() []*note {
	out := make([]*note, len(p.p.Notes))
	for i := range p.p.Notes {
		out[i] = &note{&p.p.Notes[i]}
	}
	return out
}
func (p *inboxPage) Next() string { return p.p.Next }

type note struct{ n *prefetch.InboxNote }

func (n *note) ID() string       { return n.n.ID }
func (n *note) NID() string      { return n.n.NID }
func (n *note) Type() string     { return n.n.Type }
func (n *note) Priority() string { return n.n.Priority }
func (n *note) Payload() JSON {
	if len(n.n.Payload) == 0 {
		return JSON("null")
	}
	return JSON(n.n.Payload)
}
func (n *note) TS() Int64 { return Int64(n.n.TS) }

type resolver struct {
	inbox *prefetch.InboxReader
	cache *prefetch.Cache
}

func (q *resolver) LiveEvent(ctx context.Context, args struct{ ID graphql.ID }) (*liveEvent, error) {
	id := string(args.ID)
	if err := wire.CheckID("event", id); err != nil {
		return nil, badID(err)
	}
	rd := renderFrom(ctx)
	if err := rd.spend(true, 0); err != nil {
		return nil, err
	}
	res, err := q.cache.Get(ctx, id)
	if res.Entry != nil {
		rd.use(res) // a NOT_FOUND is a cached fact too: the template depends on it
	}
	switch {
	case errors.Is(err, prefetch.ErrNotFound):
		return nil, notFound(id)
	case err != nil:
		rd.mu.Lock()
		rd.unavailable = true
		rd.mu.Unlock()
		return nil, unavailable()
	}
	return &liveEvent{e: res.Entry, rd: rd}, nil
}

type liveEvent struct {
	e  *prefetch.Entry
	rd *render
}

func (l *liveEvent) ID() graphql.ID { return graphql.ID(l.e.Event) }

func (l *liveEvent) Current() *stage {
	if l.e.Current == nil {
		return nil
	}
	return &stage{s: l.e.Current}
}

func (l *liveEvent) Stages(args struct{ Segment *string }) ([]*payload, error) {
	seg := ""
	if args.Segment != nil {
		seg = *args.Segment
		if seg != "" && !wire.ValidID(seg) {
			return nil, badID(wire.CheckID("segment", seg))
		}
	}
	ps := l.e.Stages(seg)
	n := 0
	for _, p := range ps {
		n += len(p.Key) + len(p.Payload) + 32
	}
	if err := l.rd.spend(false, n); err != nil {
		return nil, err
	}
	out := make([]*payload, len(ps))
	for i := range ps {
		out[i] = &payload{p: ps[i]}
	}
	return out, nil
}

func (l *liveEvent) TTLSeconds() int32 {
	l.rd.mu.Lock()
	defer l.rd.mu.Unlock()
	d := l.rd.deps[l.e.Event]
	d.ttlCalls++
	return d.ttlSent
}

func (l *liveEvent) RefreshAfterSeconds() int32 {
	l.rd.mu.Lock()
	defer l.rd.mu.Unlock()
	d := l.rd.deps[l.e.Event]
	d.refCalls++
	return d.refSent
}

func (l *liveEvent) MapVersion() Int64 { return Int64(l.e.MapVersion) }

type stage struct{ s *wire.Stage }

func (s *stage) Key() string { return s.s.Key }
func (s *stage) V() Int64    { return Int64(s.s.V) }
func (s *stage) TS() Int64   { return Int64(s.s.TS) }

type payload struct{ p prefetch.StagePayload }

func (p *payload) Key() string    { return p.p.Key }
func (p *payload) Payload() JSON  { return JSON(p.p.Payload) }
func (p *payload) Digest() string { return p.p.Digest }
