package memengine

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Config configures the in-memory engine. Zero values take DefaultConfig's.
type Config struct {
	LogLen         int           // recent changes kept per event; default DefaultLogLen
	IdempotencyTTL time.Duration // default DefaultIdempotencyTTL
	InboxLen       int           // notes kept per inbox; default DefaultInboxLen
	Now            func() time.Time
}

// Engine is the embedded engine of the all-in-one dev server: one process, no
// Redis, nothing survives a restart. It is safe for concurrent use.
type Engine struct {
	cfg Config

	mu     sync.Mutex // guards events; held while calling subscriber handlers (they never block)
	events map[string]*memEvent
	nextID int

	loads map[string]engine.ProxyLoad // proxy -> its last load (under mu)

	nmu sync.Mutex // guards n (notifications); held while calling push handlers
	n   memNotes
}

type memEvent struct {
	v         uint64
	log       []wire.Stage // ascending by V, at most cfg.LogLen
	subs      map[int]memSub
	idem      map[string]idemEntry
	delivery  map[uint64]map[string]engine.VersionDelivery // v -> proxy -> counters
	devices   map[string]presence                          // proxy -> devices
	stageMap  *engine.StageMapRecord
	mapV      uint64
	live      bool
	updatedMS int64                 // last stage change or map store (the event list's order)
	digests   map[string]string     // stage key -> payload digest of the stored map
	audit     []engine.AuditEntry   // oldest first, at most MaxAudit
	sched     map[string]wire.Stage // armed schedules by id (Arm set)
}

type memSub struct {
	onStage func(wire.Stage)
}

type idemEntry struct {
	reqKey  string
	stage   wire.Stage
	expires time.Time
}

type presence struct {
	devices int64
	atMS    int64
}

// New returns an empty in-memory engine.
func New(cfg Config) *Engine {
	defaults.Fill(&cfg, DefaultConfig())
	if cfg.LogLen < 0 || cfg.IdempotencyTTL < 0 || cfg.InboxLen < 0 {
		// built in code only (tests, the dev server): a programming error
		panic(fmt.Sprintf("memengine: negative LogLen %d, IdempotencyTTL %v or InboxLen %d", cfg.LogLen, cfg.IdempotencyTTL, cfg.InboxLen))
	}
	return &Engine{cfg: cfg, events: make(map[string]*memEvent)}
}

// DefaultConfig returns the in-memory engine's defaults (package engine's
// bounds); New fills each zero field of its Config from it.
func DefaultConfig() Config {
	return Config{LogLen: engine.DefaultLogLen, IdempotencyTTL: engine.DefaultIdempotencyTTL, InboxLen: engine.DefaultInboxLen, Now: time.Now}
}

func (m *Engine) event(name string) *memEvent {
	e := m.events[name]
	if e == nil {
		e = &memEvent{
			subs:     make(map[int]memSub),
			idem:     make(map[string]idemEntry),
			delivery: make(map[uint64]map[string]engine.VersionDelivery),
			devices:  make(map[string]presence),
		}
		m.events[name] = e
	}
	return e
}

// SetStage assigns the next version, stores the stage, appends it to the log and
// publishes it, as one step.
func (m *Engine) SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	if err := ctx.Err(); err != nil {
		return engine.SetResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.event(req.Event)
	now := m.cfg.Now()
	if req.IdempotencyKey != "" {
		if prev, ok := e.idem[req.IdempotencyKey]; ok && now.Before(prev.expires) {
			if prev.reqKey != req.Key {
				return engine.SetResult{Stage: prev.stage}, engine.ErrIdempotencyConflict
			}
			return engine.SetResult{Stage: prev.stage, Replayed: true}, nil
		}
	}
	// The clock floor keeps versions rising across a restart of the dev server:
	// its devices still hold the old versions.
	v := max(e.v+1, req.MinVersion, uint64(now.UnixMicro()))
	st := wire.Stage{Event: req.Event, Key: req.Key, V: v, TS: req.TS}
	if !req.Target.IsZero() {
		st.Target = req.Target
	}
	if req.Critical {
		st.Priority = wire.PriorityCritical.String()
	}
	st.Digest = e.digests[req.Key]
	st.Paced = req.Paced
	m.appendLog(e, st)
	if req.IdempotencyKey != "" {
		for k, ent := range e.idem { // lazy expiry keeps the map bounded by live keys
			if !now.Before(ent.expires) {
				delete(e.idem, k)
			}
		}
		e.idem[req.IdempotencyKey] = idemEntry{reqKey: req.Key, stage: st, expires: now.Add(cmp.Or(req.KeyTTL, m.cfg.IdempotencyTTL))}
	}
	for _, s := range e.subs {
		s.onStage(st)
	}
	return engine.SetResult{Stage: st}, nil
}

// appendLog records st as e's newest change (bounded by LogLen). Caller holds m.mu.
func (m *Engine) appendLog(e *memEvent, st wire.Stage) {
	e.v = st.V
	e.log = append(e.log, st)
	e.updatedMS = m.cfg.Now().UnixMilli()
	if len(e.log) > m.cfg.LogLen {
		e.log = append(e.log[:0], e.log[len(e.log)-m.cfg.LogLen:]...)
	}
}

// Recent returns up to n of the event's most recent stage changes, oldest first.
// An event with no stage returns an empty slice and no error.
func (m *Engine) Recent(ctx context.Context, event string, n int) ([]wire.Stage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil || n <= 0 {
		return nil, nil
	}
	l := e.log
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return append([]wire.Stage(nil), l...), nil
}

// Subscribe calls onSubscribed once the subscription is in place, then onStage
// for every change of event, until ctx ends. It returns ctx's error.
func (m *Engine) Subscribe(ctx context.Context, event string, onStage func(wire.Stage), onSubscribed func()) error {
	m.mu.Lock()
	e := m.event(event)
	id := m.nextID
	m.nextID++
	e.subs[id] = memSub{onStage: onStage}
	m.mu.Unlock()
	if onSubscribed != nil {
		onSubscribed()
	}
	<-ctx.Done()
	m.mu.Lock()
	delete(e.subs, id)
	m.mu.Unlock()
	return ctx.Err()
}

// PutDelivery stores a proxy's latest aggregates. Counters are replaced, not
// added: each report carries the proxy's running totals.
func (m *Engine) PutDelivery(ctx context.Context, r engine.DeliveryReport) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.Proxy == "" {
		return fmt.Errorf("put delivery: empty proxy id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ed := range r.Events {
		e := m.event(ed.Event)
		e.devices[r.Proxy] = presence{devices: ed.Devices, atMS: r.AtMS}
		for _, vd := range ed.Versions {
			byProxy := e.delivery[vd.V]
			if byProxy == nil {
				byProxy = make(map[string]engine.VersionDelivery)
				e.delivery[vd.V] = byProxy
			}
			byProxy[r.Proxy] = vd
		}
		// Bound memory: keep the newest LogLen versions.
		for len(e.delivery) > m.cfg.LogLen {
			var oldest uint64
			for v := range e.delivery {
				if oldest == 0 || v < oldest {
					oldest = v
				}
			}
			delete(e.delivery, oldest)
		}
	}
	return nil
}

// Delivery returns every proxy's latest figures for event and version v.
func (m *Engine) Delivery(ctx context.Context, event string, v uint64) ([]engine.ProxyDelivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return nil, nil
	}
	out := make([]engine.ProxyDelivery, 0, len(e.devices))
	staleBefore := m.cfg.Now().Add(-engine.PresenceTTL).UnixMilli()
	for proxy, p := range e.devices {
		if p.atMS < staleBefore {
			delete(e.devices, proxy) // stopped reporting: its sends still count below
			continue
		}
		pd := engine.ProxyDelivery{Proxy: proxy, AtMS: p.atMS, Devices: p.devices}
		if vd, ok := e.delivery[v][proxy]; ok {
			pd.Version = vd
		}
		out = append(out, pd)
	}
	for proxy, vd := range e.delivery[v] {
		if _, reported := e.devices[proxy]; !reported {
			out = append(out, engine.ProxyDelivery{Proxy: proxy, Version: vd})
		}
	}
	return out, nil
}

// PutStageMap replaces the event's stage map atomically and returns its version.
// raw must already be validated (wire.ParseStageMap).
func (m *Engine) PutStageMap(ctx context.Context, event string, raw []byte, updatedMS int64) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.event(event)
	e.mapV++
	e.stageMap = &engine.StageMapRecord{Version: e.mapV, UpdatedMS: updatedMS, Raw: append([]byte(nil), raw...)}
	e.digests = nil
	if sm, err := wire.ParseStageMap(raw); err == nil {
		e.digests = sm.Digests()
	}
	e.updatedMS = m.cfg.Now().UnixMilli()
	return e.mapV, nil
}

// SetLive switches the event window on or off.
func (m *Engine) SetLive(ctx context.Context, event string, live bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.event(event).live = live
	return nil
}

// Snapshot returns the event's stage map, current stage and window.
func (m *Engine) Snapshot(ctx context.Context, event string) (engine.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return engine.Snapshot{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return engine.Snapshot{}, nil
	}
	snap := engine.Snapshot{Map: e.stageMap, Live: e.live}
	if n := len(e.log); n > 0 {
		cur := e.log[n-1]
		snap.Current = &cur
	}
	return snap, nil
}

// Exists reports whether the event has a stage or a stage map.
func (m *Engine) Exists(ctx context.Context, event string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	return e != nil && (e.v > 0 || e.stageMap != nil), nil
}

// Close releases nothing; it exists so Engine and the Redis engine are
// interchangeable.
func (m *Engine) Close() {}
