package proxy

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

const numShards = 64

// hub maps events to topics, sharded so a broadcast on one event never locks out
// subscribes on another.
type hub struct {
	s      *Server
	seed   maphash.Seed
	shards [numShards]hubShard
	count  atomic.Int64 // topics, for the MaxEvents cap
}

type hubShard struct {
	mu     sync.Mutex
	topics map[string]*topic
}

func newHub(s *Server) *hub {
	h := &hub{s: s, seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].topics = make(map[string]*topic)
	}
	return h
}

func (h *hub) shard(event string) *hubShard {
	return &h.shards[maphash.String(h.seed, event)%numShards]
}

// prepared is one stage change encoded once for every device of this proxy.
type prepared struct {
	stage wire.Stage
	frame []byte
	stats *versionStats
}

// topic is one event on this proxy: its subscribers, its recent history, and its
// single engine subscription.
type topic struct {
	s     *Server
	event string

	inbox  chan wire.Stage // from the engine subscription; drained by run
	resync chan struct{}   // (re)subscribed or reconcile: re-read history
	cancel context.CancelFunc

	mu         sync.RWMutex
	conns      map[*conn]struct{}
	hist       []*prepared // ascending by version, at most HistoryLen
	stats      map[uint64]*versionStats
	emptySince time.Time // zero while it has conns
}

// subResult is what hub.subscribe did.
type subResult int

const (
	subOK subResult = iota
	subClosed
	subTooMany    // the connection holds MaxSubscriptions events
	subEventLimit // the proxy holds MaxEvents topics
)

// subscribe adds c to event's topic, creating the topic (and its engine
// subscription) if needed, then sends c the newest matching stage newer than have.
// The caller has already admitted the subscription (token patterns, budget,
// existence); the limits checked here are the ones that need the hub's locks.
// Nothing is created for a closed connection, one at its limit, or past the
// proxy's event cap.
func (h *hub) subscribe(c *conn, event string, have uint64) subResult {
	sh := h.shard(event)
	sh.mu.Lock()
	c.mu.Lock()
	closed, held, n := c.closed, c.subByEvent(event) != nil, len(c.subs)
	c.mu.Unlock()
	switch {
	case closed:
		sh.mu.Unlock()
		return subClosed
	case !held && n >= h.s.cfg.MaxSubscriptions:
		sh.mu.Unlock()
		return subTooMany
	}
	t := sh.topics[event]
	if t == nil {
		if int(h.count.Load()) >= h.s.cfg.MaxEvents {
			sh.mu.Unlock()
			return subEventLimit
		}
		t = h.newTopic(event)
		sh.topics[event] = t
	}
	t.mu.Lock()
	c.mu.Lock()
	if c.closed {
		// The topic keeps emptySince (set at creation) and is swept.
		c.mu.Unlock()
		t.mu.Unlock()
		sh.mu.Unlock()
		return subClosed
	}
	e := c.sub(t)
	if e == nil {
		if len(c.subs) >= h.s.cfg.MaxSubscriptions {
			c.mu.Unlock()
			t.mu.Unlock()
			sh.mu.Unlock()
			return subTooMany
		}
		c.subs = append(c.subs, subEntry{t: t})
		e = &c.subs[len(c.subs)-1]
		h.s.metrics.subscriptions.Inc()
	}
	e.v = have // the device's own word on what it holds: trust it, even if lower
	c.mu.Unlock()
	if _, in := t.conns[c]; !in {
		t.conns[c] = struct{}{}
		t.emptySince = time.Time{}
	}
	t.mu.Unlock()
	sh.mu.Unlock()

	t.mu.RLock()
	t.offerBest(c)
	t.mu.RUnlock()
	return subOK
}

// unsubscribe removes c from event's topic. The topic lingers (see TopicLinger).
func (h *hub) unsubscribe(c *conn, event string) bool {
	sh := h.shard(event)
	sh.mu.Lock()
	t := sh.topics[event]
	sh.mu.Unlock()
	if t == nil {
		return false
	}
	t.mu.Lock()
	c.mu.Lock()
	i := slices.IndexFunc(c.subs, func(e subEntry) bool { return e.t == t })
	if i >= 0 {
		c.subs = slices.Delete(c.subs, i, i+1)
		h.s.metrics.subscriptions.Dec()
	}
	c.mu.Unlock()
	delete(t.conns, c)
	if len(t.conns) == 0 && t.emptySince.IsZero() {
		t.emptySince = h.s.cfg.Now()
	}
	t.mu.Unlock()
	return i >= 0
}

// sweep removes topics that have had no device for TopicLinger.
func (h *hub) sweep(now time.Time) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for ev, t := range sh.topics {
			t.mu.Lock()
			if len(t.conns) == 0 && !t.emptySince.IsZero() && now.Sub(t.emptySince) >= h.s.cfg.TopicLinger {
				t.cancel()
				delete(sh.topics, ev)
				h.count.Add(-1)
				h.s.metrics.topics.Dec()
			}
			t.mu.Unlock()
		}
		sh.mu.Unlock()
	}
}

// topics returns a snapshot of all topics.
func (h *hub) all() []*topic {
	var out []*topic
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, t := range sh.topics {
			out = append(out, t)
		}
		sh.mu.Unlock()
	}
	return out
}

// closeAll stops every topic (server shutdown).
func (h *hub) closeAll() {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for ev, t := range sh.topics {
			t.cancel()
			delete(sh.topics, ev)
			h.count.Add(-1)
		}
		sh.mu.Unlock()
	}
}

func (h *hub) newTopic(event string) *topic {
	ctx, cancel := context.WithCancel(h.s.ctx)
	t := &topic{
		s:      h.s,
		event:  event,
		inbox:  make(chan wire.Stage, 256),
		resync: make(chan struct{}, 1),
		cancel: cancel,
		conns:  make(map[*conn]struct{}),
		stats:  make(map[uint64]*versionStats),
		// Empty until its first device is added: if that device is gone before
		// it is, the sweep still removes the topic.
		emptySince: h.s.cfg.Now(),
	}
	h.count.Add(1)
	h.s.metrics.topics.Inc()
	h.s.wg.Add(2)
	go func() {
		defer h.s.wg.Done()
		// Subscribe first, read history once the subscription is in place
		// (onSubscribed -> resync), so no change falls in the gap.
		err := h.s.eng.Subscribe(ctx, event, t.push, t.requestResync)
		if err != nil && ctx.Err() == nil {
			h.s.log.Error("engine subscription ended", "event", event, "err", err)
		}
	}()
	go func() {
		defer h.s.wg.Done()
		t.run(ctx)
	}()
	return t
}

// push is the engine's callback: it must not block.
func (t *topic) push(s wire.Stage) {
	select {
	case t.inbox <- s:
	default:
		// The inbox is full (a burst of changes faster than fanout): drop this one
		// and re-read history instead; latest state wins, so nothing is lost.
		t.s.metrics.inboxOverflow.Inc()
		t.requestResync()
	}
}

func (t *topic) requestResync() {
	select {
	case t.resync <- struct{}{}:
	default:
	}
}

func (t *topic) run(ctx context.Context) {
	reconcile := time.NewTimer(t.s.jitterBetween(t.s.cfg.ReconcileInterval/2, t.s.cfg.ReconcileInterval))
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-t.inbox:
			if s.Event != t.event {
				continue
			}
			if p := t.insert([]wire.Stage{s}); len(p) > 0 {
				t.s.metrics.broadcasts.Inc()
				t.fanout(p[0])
			}
		case <-t.resync:
			t.reread(ctx)
		case <-reconcile.C:
			t.reread(ctx)
			reconcile.Reset(t.s.jitterBetween(t.s.cfg.ReconcileInterval/2, t.s.cfg.ReconcileInterval))
		}
	}
}

// reread reads the event's recent history from the engine and sends every device
// the newest matching stage it lacks. Retries with backoff until it succeeds or
// ctx ends: while the engine is down devices stay connected on what they have.
func (t *topic) reread(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		recent, err := t.s.eng.Recent(rctx, t.event, t.s.cfg.HistoryLen)
		cancel()
		if err == nil {
			if added := t.insert(recent); len(added) > 0 {
				t.s.metrics.catchupRereads.Inc()
				t.mu.RLock()
				for c := range t.conns {
					t.offerBest(c)
				}
				t.mu.RUnlock()
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		t.s.metrics.engineErrors.Inc()
		d := t.s.jitterBetween(0, min(5*time.Second, 100*time.Millisecond<<min(attempt, 6)))
		t.s.log.Warn("re-reading event history failed; devices keep their stage", "event", t.event, "err", err, "retry_in", d.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// insert merges stages into the history, encoding each new one once; it returns
// the new prepared entries, ascending.
func (t *topic) insert(stages []wire.Stage) []*prepared {
	t.mu.Lock()
	defer t.mu.Unlock()
	var added []*prepared
	for _, s := range stages {
		i, found := slices.BinarySearchFunc(t.hist, s.V, func(p *prepared, v uint64) int {
			switch {
			case p.stage.V < v:
				return -1
			case p.stage.V > v:
				return 1
			}
			return 0
		})
		if found {
			continue
		}
		if len(t.hist) >= t.s.cfg.HistoryLen && i == 0 {
			continue // older than everything we keep
		}
		p := &prepared{stage: s, frame: wire.AppendStage(make([]byte, 0, 96), &s), stats: t.statsFor(s)}
		t.hist = slices.Insert(t.hist, i, p)
		if len(t.hist) > t.s.cfg.HistoryLen {
			t.hist = slices.Delete(t.hist, 0, len(t.hist)-t.s.cfg.HistoryLen)
		}
		added = append(added, p)
	}
	return added
}

// fanout offers p to every subscriber. Offering only fills mailboxes and queues
// idle conns: it never waits on a device.
func (t *topic) fanout(p *prepared) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for c := range t.conns {
		c.offer(t, p)
	}
}

// offerBest offers c the newest stage in history that matches it. Caller holds t.mu (read).
func (t *topic) offerBest(c *conn) {
	for i := len(t.hist) - 1; i >= 0; i-- {
		p := t.hist[i]
		if p.stage.Target.Matches(c.platform, c.segment) {
			c.offer(t, p)
			return
		}
	}
}
