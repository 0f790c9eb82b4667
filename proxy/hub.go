package proxy

import (
	"context"
	"errors"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
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
	stage    wire.Stage
	frame    []byte
	stats    *versionStats
	critical bool // the producer marked the change critical: written before other frames
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
	list       []*conn       // subscribers; fanout copies it under the read lock
	idx        map[*conn]int // position of each subscriber in list
	hist       []*prepared   // ascending by version, at most HistoryLen
	stats      map[uint64]*versionStats
	emptySince time.Time // zero while it has conns
	removed    bool      // swept: a subscribe that finds it must look the event up again

	fanBuf []*conn         // fanout's copy of list (run goroutine only)
	byCell [numCells]int64 // subscribers per (platform, segment) cell (under mu, with list)

	armed      map[string]*armedStage // armed schedules by id (run goroutine only)
	paceCancel context.CancelFunc     // stops the current paced waves (run goroutine only)
	fire       chan string            // schedule ids whose time came (timers -> run)
}

// addConn adds c to the subscribers. Caller holds t.mu.
func (t *topic) addConn(c *conn) {
	if _, in := t.idx[c]; in {
		return
	}
	t.idx[c] = len(t.list)
	t.list = append(t.list, c)
	t.byCell[c.cell]++
	t.emptySince = time.Time{}
}

// removeConn removes c (swap with the last). Caller holds t.mu.
func (t *topic) removeConn(c *conn) {
	i, in := t.idx[c]
	if !in {
		return
	}
	last := len(t.list) - 1
	t.list[i] = t.list[last]
	t.idx[t.list[i]] = i
	t.list[last] = nil
	t.list = t.list[:last]
	t.byCell[c.cell]--
	delete(t.idx, c)
}

// devices is the number of subscribers. Caller holds t.mu.
func (t *topic) devices() int { return len(t.list) }

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
	for {
		t, res := h.topicFor(c, event)
		if t == nil {
			return res
		}
		t.mu.Lock()
		if t.removed {
			t.mu.Unlock() // swept between the lookup and now: look again
			continue
		}
		c.mu.Lock()
		if !c.state.live() {
			// A topic created for c keeps emptySince (set at creation): swept.
			c.mu.Unlock()
			t.mu.Unlock()
			return subClosed
		}
		e := c.sub(t)
		if e == nil {
			if len(c.subs) >= h.s.cfg.MaxSubscriptions {
				c.mu.Unlock()
				t.mu.Unlock()
				return subTooMany
			}
			c.subs = append(c.subs, subEntry{t: t})
			e = &c.subs[len(c.subs)-1]
			h.s.metrics.subscriptions.Inc()
		}
		e.v = have // the device's own word on what it holds: trust it, even if lower
		c.mu.Unlock()
		t.addConn(c)
		t.offerBest(c) // under t.mu: the history and the new subscriber are consistent
		t.mu.Unlock()
		return subOK
	}
}

// topicFor returns event's topic, creating it (and its engine subscription)
// when c may subscribe and the proxy is under MaxEvents. The shard lock is held
// only for the map lookup, never while waiting for a topic's lock.
func (h *hub) topicFor(c *conn, event string) (*topic, subResult) {
	c.mu.Lock()
	closed, held, n := !c.state.live(), c.subByEvent(event) != nil, len(c.subs)
	c.mu.Unlock()
	switch {
	case closed:
		return nil, subClosed
	case !held && n >= h.s.cfg.MaxSubscriptions:
		return nil, subTooMany
	}
	sh := h.shard(event)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.topics[event]
	if t == nil {
		// Reserve the place first: two shards creating topics at once must not
		// both pass a check of the same count.
		if h.count.Add(1) > int64(h.s.cfg.MaxEvents) {
			h.count.Add(-1)
			return nil, subEventLimit
		}
		t = h.newTopic(event)
		sh.topics[event] = t
	}
	return t, subOK
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
	t.removeConn(c)
	if t.devices() == 0 && t.emptySince.IsZero() {
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
			if t.devices() == 0 && !t.emptySince.IsZero() && now.Sub(t.emptySince) >= h.s.cfg.TopicLinger {
				t.removed = true
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

// newTopic starts event's topic; the caller reserved its place in h.count.
func (h *hub) newTopic(event string) *topic {
	ctx, cancel := context.WithCancel(h.s.ctx)
	t := &topic{
		s:      h.s,
		event:  event,
		inbox:  make(chan wire.Stage, 256),
		resync: make(chan struct{}, 1),
		fire:   make(chan string, 64),
		cancel: cancel,
		idx:    make(map[*conn]int),
		stats:  make(map[uint64]*versionStats),
		// Empty until its first device is added: if that device is gone before
		// it is, the sweep still removes the topic.
		emptySince: h.s.cfg.Now(),
	}
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

// rereadResult is one history read, handed from its goroutine to run.
type rereadResult struct {
	stages []wire.Stage
	armed  []wire.Stage // the engine's schedules (nil when that read failed)
	err    error
}

// run owns the topic's history updates and fanout. History re-reads (after a
// (re)subscription, an inbox overflow, or the reconcile timer) run in a
// goroutine of their own, at most one at a time, and report back here; a failed
// one is retried with backoff from a timer. Live messages keep flowing
// meanwhile: a slow or failing engine never stops this event's fanout.
func (t *topic) run(ctx context.Context) {
	reconcile := time.NewTimer(t.s.jitterBetween(t.s.cfg.ReconcileInterval/2, t.s.cfg.ReconcileInterval))
	defer reconcile.Stop()
	results := make(chan rereadResult, 1) // at most one re-read in flight: never blocks
	var retry <-chan time.Time
	rereading, again, attempt := false, false, 0
	start := func() {
		if rereading {
			again = true // one more after this one: it may have started before the change
			return
		}
		rereading = true
		go func() {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			st, err := t.s.eng.Recent(rctx, t.event, t.s.cfg.HistoryLen)
			armed, aerr := t.s.eng.Schedules(rctx, t.event)
			if aerr != nil {
				armed = nil
			} else if armed == nil {
				armed = []wire.Stage{}
			}
			results <- rereadResult{st, armed, err}
		}()
	}
	defer t.stopArmed()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-t.fire:
			t.fireArmed(id)
		case s := <-t.inbox:
			if s.Event != t.event {
				continue
			}
			if s.Arm != nil {
				t.handleArm(s)
				continue
			}
			if p := t.insert([]wire.Stage{s}, false); len(p) > 0 {
				t.s.metrics.broadcasts.Inc()
				if s.Paced && t.s.cfg.PacedRate > 0 {
					t.startPaced(ctx, p[0])
				} else {
					if t.paceCancel != nil {
						t.paceCancel() // a newer change goes to everyone now
						t.paceCancel = nil
					}
					t.fanout(p[0])
				}
			}
		case <-t.resync:
			start()
		case <-retry:
			retry = nil
			start()
		case <-reconcile.C:
			start()
			reconcile.Reset(t.s.jitterBetween(t.s.cfg.ReconcileInterval/2, t.s.cfg.ReconcileInterval))
		case res := <-results:
			rereading = false
			if !engine.Usable(res.err) {
				if ctx.Err() != nil {
					return
				}
				t.s.metrics.engineErrors.Inc()
				d := t.s.jitterBetween(0, min(5*time.Second, 100*time.Millisecond<<min(attempt, 6)))
				attempt++
				t.s.log.Warn("re-reading event history failed; devices keep their stage", "event", t.event, "err", res.err, "retry_in", d.String())
				retry = time.After(d)
				continue
			}
			attempt = 0
			if res.armed != nil {
				t.syncArmed(res.armed)
			}
			var se *engine.SkippedError
			if errors.As(res.err, &se) {
				t.s.metrics.skippedEntries.Add(float64(len(se.IDs)))
				t.s.log.Error("skipped undecodable log entries", "event", t.event, "err", res.err)
			}
			if added := t.insert(res.stages, true); len(added) > 0 {
				t.s.metrics.catchupRereads.Inc()
				t.offerAll()
			}
			if again {
				again = false
				start()
			}
		}
	}
}

// offerAll offers every subscriber the newest stage it lacks.
func (t *topic) offerAll() {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, c := range t.list {
		t.offerBest(c)
	}
}

// insert merges stages into the history, encoding each new one once; it returns
// the new prepared entries, ascending. A stage whose version the history holds
// with another key or target is a conflict (versions are unique by
// construction, so one means a store lost data or a bug): it is logged and
// counted; the log's word (fromLog) replaces the history's, and a live message's
// conflict asks for a re-read so the log decides.
func (t *topic) insert(stages []wire.Stage, fromLog bool) []*prepared {
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
			if old := t.hist[i].stage; old.Key != s.Key || !old.Target.Equal(s.Target) {
				t.s.metrics.versionConflicts.Inc()
				t.s.log.Error("version conflict: one version, two stages", "event", t.event, "v", s.V,
					"held", old.Key, "received", s.Key, "from_log", fromLog)
				if fromLog {
					t.hist[i] = &prepared{stage: s, frame: wire.AppendStage(make([]byte, 0, 96), &s), stats: t.statsFor(s), critical: s.Priority != ""}
				} else {
					t.requestResync()
				}
			}
			continue
		}
		if len(t.hist) >= t.s.cfg.HistoryLen && i == 0 {
			continue // older than everything we keep
		}
		p := &prepared{stage: s, frame: wire.AppendStage(make([]byte, 0, 96), &s), stats: t.statsFor(s), critical: s.Priority != ""}
		t.hist = slices.Insert(t.hist, i, p)
		if len(t.hist) > t.s.cfg.HistoryLen {
			t.hist = slices.Delete(t.hist, 0, len(t.hist)-t.s.cfg.HistoryLen)
		}
		added = append(added, p)
	}
	return added
}

// fanout offers p to every subscriber. It copies the subscriber list under the
// read lock (a memmove) and offers without any topic lock, so subscribes, acks
// and unsubscribes never wait for a fanout to finish. Offering only fills
// mailboxes and queues idle conns: it never waits on a device. A conn that
// subscribes after the copy gets p from offerBest at its subscribe (it reads the
// history under the lock, after insert added p). Run goroutine only.
func (t *topic) fanout(p *prepared) {
	t.mu.RLock()
	t.fanBuf = append(t.fanBuf[:0], t.list...)
	t.mu.RUnlock()
	for _, c := range t.fanBuf {
		c.offer(t, p)
	}
	clear(t.fanBuf) // drop references to conns that may leave
}

// offerBest offers c the newest stage in history that matches it. Caller holds t.mu (read).
func (t *topic) offerBest(c *conn) {
	for i := len(t.hist) - 1; i >= 0; i-- {
		p := t.hist[i]
		if p.stage.Target.Matches(c.platform, c.segment) {
			if c.offer(t, p) {
				p.stats.catchups[c.cell].Add(1)
				p.stats.markDirty()
			}
			return
		}
	}
}
