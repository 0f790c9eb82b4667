package proxy

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Notifications on the proxy.
//
// A connection holds up to two inboxes: its member's (the device token's mid)
// and its device's (the token's sub, or the query's device where the
// deployment trusts device ids). noteHub maps each inbox to the connections
// that hold it and keeps the engine's registry of this proxy's inboxes: an
// inbox is registered when its first connection arrives (batched, within
// registerEvery), refreshed every engine.RegistryTTL/3, removed when its last
// connection leaves.
//
// Pushes arrive on one engine subscription per notification shard; each is
// offered to the inbox's connections. A device resumes with {"op":"inbox"}:
// the proxy waits for the inbox's registration to be written, then reads the
// backlog after the device's cursor. Live pushes that arrive meanwhile are held
// and follow the backlog. That order is why nothing falls between the two (see
// package engine, "Why the registry cannot lose a note").
//
// Nothing is skipped (hardening #2): every push names the inbox entry before
// it (engine.NotePush.Prev). A connection whose device has seen less than that
// missed a note (a registration a failover lost, a push lost while a shard's
// subscription was down): it holds the push and reads the backlog after what
// it has seen first, so its resume watermark never passes an unwritten note.
// When a shard's subscription comes back, the proxy writes its registrations
// of that shard again, then re-reads the inboxes of that shard that its
// devices track. Those reads (resyncs) are queued and run off the engine's
// callback, at most MaxResumes backlog reads in flight in all (resumes
// included); a failed resync is retried later and never sends the device an
// error frame it did not ask for. A connection that never resumed and was
// never pushed a note tracks nothing and is not re-read.
//
// Lock order: noteHub.mu, then conn.mu; noteHub.rmu is taken alone. Push
// handlers never block.

// inboxEntry is one inbox held on this proxy.
type inboxEntry struct {
	conns      []*conn
	registered chan struct{} // closed once the engine has the registration
}

type noteHub struct {
	s *Server

	mu      sync.Mutex
	inboxes map[engine.Inbox]*inboxEntry
	adds    map[engine.Inbox]*inboxEntry // registrations to write
	removes map[engine.Inbox]struct{}    // registrations to delete
	kick    chan struct{}

	subscribed   atomic.Int64 // shards whose push subscription is up (first time)
	shardsUp     [engine.NoteShards]atomic.Bool
	resumes      chan struct{} // backlog reads in flight (semaphore)
	pendingBytes atomic.Int64  // bytes of notes queued on connections

	cmu    sync.Mutex
	counts map[string]engine.NoteCount // per notification id, since the last report
	// per (type, priority), since the last report (the analytics stream); the
	// types have a slot each in types, the first maxNoteTypes of them (the
	// rest count as type otherNoteType)
	classes map[NoteClass]NoteTally
	types   *labelTable
	reads   map[engine.Inbox]wire.Pos // acks since the last report

	restore [engine.NoteShards]atomic.Bool // shard k's subscription came back: re-register, resync

	rmu      sync.Mutex
	resyncQ  []resyncReq         // resyncs waiting for a backlog-read slot
	resyncIn map[*connInbox]bool // queued or running: at most one per connection inbox
	rkick    chan struct{}
}

// resyncReq is one connection inbox to re-read after what it has seen.
type resyncReq struct {
	c       *conn
	ci      *connInbox
	attempt int
}

// registerEvery batches registry writes.
const registerEvery = 5 * time.Millisecond

func newNoteHub(s *Server) *noteHub {
	return &noteHub{s: s, types: newLabelTable(maxNoteTypes, otherNoteType), inboxes: make(map[engine.Inbox]*inboxEntry), adds: make(map[engine.Inbox]*inboxEntry),
		removes: make(map[engine.Inbox]struct{}), kick: make(chan struct{}, 1),
		resumes: make(chan struct{}, s.cfg.MaxResumes),
		counts:  make(map[string]engine.NoteCount), reads: make(map[engine.Inbox]wire.Pos),
		resyncIn: make(map[*connInbox]bool), rkick: make(chan struct{}, 1)}
}

// ready reports whether every shard's push subscription has been up.
func (h *noteHub) ready() bool { return h.subscribed.Load() == engine.NoteShards }

// run holds the push subscriptions and writes registrations until ctx ends.
func (h *noteHub) run(ctx context.Context) {
	h.s.wg.Add(3)
	go func() {
		defer h.s.wg.Done()
		h.resyncer(ctx)
	}()
	go func() {
		defer h.s.wg.Done()
		_ = h.s.eng.SubscribeNotes(ctx, h.s.cfg.ID, h.onPush, h.onSubscribed)
	}()
	go func() {
		defer h.s.wg.Done()
		h.registrar(ctx)
	}()
}

func (h *noteHub) onSubscribed(k int) {
	if !h.shardsUp[k].Swap(true) {
		h.subscribed.Add(1)
		return
	}
	// Pushes published while the subscription was down are lost, and a
	// failover may have lost registrations: the registrar writes this shard's
	// registrations again, then queues resyncs of its inboxes (off this
	// callback, which runs on the engine's connection).
	h.s.metrics.noteResyncs.Inc()
	h.restore[k].Store(true)
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// restoreShards re-registers the inboxes of every shard whose subscription
// came back, then queues their resyncs. A shard whose registration fails stays
// pending for the next flush.
func (h *noteHub) restoreShards(ctx context.Context) {
	for k := range h.restore {
		if !h.restore[k].Load() {
			continue
		}
		h.mu.Lock()
		var ibs []engine.Inbox
		var conns [][]*conn
		for ib, e := range h.inboxes {
			if ib.Shard() == k {
				ibs = append(ibs, ib)
				conns = append(conns, slices.Clone(e.conns))
			}
		}
		h.mu.Unlock()
		if len(ibs) > 0 {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := h.s.eng.Register(rctx, h.s.cfg.ID, ibs, nil)
			cancel()
			if err != nil {
				h.s.metrics.engineErrors.Inc()
				h.s.log.Warn("note registry not restored after a resubscribe; retrying", "shard", k, "inboxes", len(ibs), "err", err)
				continue
			}
		}
		h.restore[k].Store(false)
		for i, ib := range ibs {
			for _, c := range conns[i] {
				c.resyncInbox(ib)
			}
		}
	}
}

// queueResync queues a re-read of ci (at most once at a time per inbox).
func (h *noteHub) queueResync(r resyncReq) {
	h.rmu.Lock()
	if h.resyncIn[r.ci] && r.attempt == 0 {
		h.rmu.Unlock()
		return
	}
	h.resyncIn[r.ci] = true
	h.resyncQ = append(h.resyncQ, r)
	h.rmu.Unlock()
	select {
	case h.rkick <- struct{}{}:
	default:
	}
}

// resyncer runs queued resyncs, each holding a backlog-read slot, until ctx ends.
func (h *noteHub) resyncer(ctx context.Context) {
	for {
		h.rmu.Lock()
		var r resyncReq
		ok := len(h.resyncQ) > 0
		if ok {
			r = h.resyncQ[0]
			h.resyncQ[0] = resyncReq{}
			h.resyncQ = h.resyncQ[1:]
		}
		h.rmu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-h.rkick:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case h.resumes <- struct{}{}:
		}
		h.s.metrics.resyncs.Inc()
		go func() {
			defer func() { <-h.resumes }()
			r.c.runResync(r)
		}()
	}
}

// resyncsQueued is how many resyncs wait for a slot.
func (h *noteHub) resyncsQueued() int {
	h.rmu.Lock()
	defer h.rmu.Unlock()
	return len(h.resyncQ)
}

// onPush offers a pushed note to the inbox's connections. It never blocks.
func (h *noteHub) onPush(p engine.NotePush) {
	h.s.metrics.notePushes.Inc()
	n := h.newNoteOut(p.Inbox.Kind, p.Pos, p.Priority, p.Body)
	n.prev = p.Prev
	h.mu.Lock()
	e := h.inboxes[p.Inbox]
	var conns []*conn
	if e != nil {
		conns = append(conns, e.conns...)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.offerNote(n, true)
	}
}

// join adds c to ib's connections (registering ib when it is new here).
func (h *noteHub) join(c *conn, ib engine.Inbox) {
	h.mu.Lock()
	e := h.inboxes[ib]
	if e == nil {
		e = &inboxEntry{registered: make(chan struct{})}
		h.inboxes[ib] = e
		h.adds[ib] = e
		delete(h.removes, ib)
	}
	e.conns = append(e.conns, c)
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// leave removes c from ib's connections (unregistering ib when it was the last).
func (h *noteHub) leave(c *conn, ib engine.Inbox) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.inboxes[ib]
	if e == nil {
		return
	}
	if i := slices.Index(e.conns, c); i >= 0 {
		e.conns = slices.Delete(e.conns, i, i+1)
	}
	if len(e.conns) == 0 {
		delete(h.inboxes, ib)
		if _, pending := h.adds[ib]; pending {
			delete(h.adds, ib)
			close(e.registered) // never written: nobody waits on it any more
		} else {
			h.removes[ib] = struct{}{}
		}
	}
}

// registered returns the channel closed once ib's registration is written.
func (h *noteHub) registered(ib engine.Inbox) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.inboxes[ib]; e != nil {
		return e.registered
	}
	return nil
}

// registrar writes registrations in batches, refreshes them all every
// RegistryTTL/3 (jittered), and removes them all when ctx ends (a drained or
// closed proxy gets nothing more).
func (h *noteHub) registrar(ctx context.Context) {
	refresh := time.NewTimer(h.s.jitterBetween(engine.RegistryTTL/4, engine.RegistryTTL/3))
	defer refresh.Stop()
	tick := time.NewTicker(registerEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			h.unregisterAll()
			return
		case <-refresh.C:
			h.refreshAll(ctx)
			refresh.Reset(h.s.jitterBetween(engine.RegistryTTL/4, engine.RegistryTTL/3))
		case <-h.kick:
		case <-tick.C:
		}
		h.flush(ctx)
		h.restoreShards(ctx)
	}
}

// flush writes pending registrations; on failure they stay pending.
func (h *noteHub) flush(ctx context.Context) {
	h.mu.Lock()
	if len(h.adds) == 0 && len(h.removes) == 0 {
		h.mu.Unlock()
		return
	}
	adds, removes := h.adds, h.removes
	h.adds, h.removes = make(map[engine.Inbox]*inboxEntry), make(map[engine.Inbox]struct{})
	h.mu.Unlock()
	add := make([]engine.Inbox, 0, len(adds))
	for ib := range adds {
		add = append(add, ib)
	}
	rm := make([]engine.Inbox, 0, len(removes))
	for ib := range removes {
		rm = append(rm, ib)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := h.s.eng.Register(rctx, h.s.cfg.ID, add, rm)
	cancel()
	if err != nil {
		h.s.metrics.engineErrors.Inc()
		h.s.log.Warn("note registry not written; retrying", "add", len(add), "remove", len(rm), "err", err)
		h.mu.Lock()
		for ib, e := range adds {
			if h.inboxes[ib] == e {
				h.adds[ib] = e
			}
		}
		for ib := range removes {
			if h.inboxes[ib] == nil {
				h.removes[ib] = struct{}{}
			}
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(h.s.jitterBetween(50*time.Millisecond, 250*time.Millisecond)):
		}
		return
	}
	h.s.metrics.registrations.Add(float64(len(add)))
	h.mu.Lock()
	for ib, e := range adds {
		if h.inboxes[ib] == e {
			close(e.registered)
		}
	}
	h.mu.Unlock()
}

func (h *noteHub) held() []engine.Inbox {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]engine.Inbox, 0, len(h.inboxes))
	for ib := range h.inboxes {
		out = append(out, ib)
	}
	return out
}

func (h *noteHub) refreshAll(ctx context.Context) {
	all := h.held()
	for len(all) > 0 && ctx.Err() == nil {
		n := min(len(all), 1000)
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := h.s.eng.Register(rctx, h.s.cfg.ID, all[:n], nil); err != nil {
			h.s.log.Warn("note registry refresh failed", "inboxes", n, "err", err)
		}
		cancel()
		all = all[n:]
	}
}

func (h *noteHub) unregisterAll() {
	all := h.held()
	for len(all) > 0 {
		n := min(len(all), 1000)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := h.s.eng.Register(ctx, h.s.cfg.ID, nil, all[:n]); err != nil {
			h.s.log.Warn("note registry not cleaned on shutdown (entries expire within the registry ttl)", "inboxes", n, "err", err)
		}
		cancel()
		all = all[n:]
	}
}

// resumesInFlight is the number of backlog reads running.
func (h *noteHub) resumesInFlight() int { return len(h.resumes) }
