package proxy

import (
	"bytes"
	"context"
	"fmt"
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

// NoteClass is a notification type and priority; NoteTally what this proxy
// did with notes of a class between two reports (Activity.Notes).
type NoteClass struct{ Type, Priority string }

// NoteTally: Pushed note frames written to devices, Acked device acks.
type NoteTally struct{ Pushed, Acked uint64 }

// maxNoteTypes bounds the note types this proxy counts by name (types are
// the producers' ids); otherNoteType stands for the types past it.
const (
	maxNoteTypes  = 254
	otherNoteType = "(other)"
)

// tally returns the class of a note type slot and priority.
func (h *noteHub) tally(typ uint8, prio wire.Priority) NoteClass {
	return NoteClass{h.types.name(int(typ)), prio.String()}
}

// takeClasses returns the class counts since the last call.
func (h *noteHub) takeClasses() map[NoteClass]NoteTally {
	h.cmu.Lock()
	defer h.cmu.Unlock()
	out := h.classes
	h.classes = nil
	return out
}

// countSent and countAck feed the notification reports and the class counts.
func (h *noteHub) countSent(nids []string, notes []*noteOut) {
	h.cmu.Lock()
	for _, id := range nids {
		c := h.counts[id]
		c.Sent++
		h.counts[id] = c
	}
	if h.s.cfg.OnActivity != nil {
		if h.classes == nil {
			h.classes = map[NoteClass]NoteTally{}
		}
		for _, n := range notes {
			k := h.tally(n.typ, n.prio)
			t := h.classes[k]
			t.Pushed++
			h.classes[k] = t
		}
	}
	h.cmu.Unlock()
}

func (h *noteHub) countAck(ib engine.Inbox, p wire.Pos, sn sentNote) {
	h.cmu.Lock()
	defer h.cmu.Unlock()
	if sn.nid != "" {
		c := h.counts[sn.nid]
		c.Acked++
		h.counts[sn.nid] = c
	}
	if h.s.cfg.OnActivity != nil && sn.pos == p {
		if h.classes == nil {
			h.classes = map[NoteClass]NoteTally{}
		}
		k := h.tally(sn.typ, sn.prio)
		t := h.classes[k]
		t.Acked++
		h.classes[k] = t
	}
	if cur, ok := h.reads[ib]; !ok || cur.Less(p) {
		if ok || len(h.reads) < maxReadMarks {
			h.reads[ib] = p
		}
	}
}

// maxReadMarks bounds the acks kept between two reports.
const maxReadMarks = 100000

// flushCounts sends the counts and read marks gathered since the last report.
func (h *noteHub) flushCounts(ctx context.Context) {
	var counts map[string]engine.NoteCount
	var reads map[engine.Inbox]wire.Pos
	h.cmu.Lock()
	if len(h.counts) > 0 {
		counts, h.counts = h.counts, make(map[string]engine.NoteCount)
	}
	if len(h.reads) > 0 {
		reads, h.reads = h.reads, make(map[engine.Inbox]wire.Pos)
	}
	h.cmu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if len(counts) > 0 {
		if err := h.s.eng.PutNoteDelivery(rctx, counts); err != nil {
			h.s.log.Warn("notification counts not published", "notes", len(counts), "err", err)
		}
	}
	if len(reads) > 0 {
		if err := h.s.eng.MarkRead(rctx, reads); err != nil {
			h.s.log.Warn("read marks not published", "inboxes", len(reads), "err", err)
		}
	}
}

// noteOut is one note on its way to connections: shared by every connection of
// the inbox, immutable.
type noteOut struct {
	kind byte
	pos  wire.Pos
	prev wire.Pos // the inbox's entry before it (pushes only; zero: unknown or none)
	prio wire.Priority
	body []byte
	nid  string
	typ  uint8 // the note type's slot in noteHub.types (the class counts)
}

func (h *noteHub) newNoteOut(kind byte, pos wire.Pos, prio wire.Priority, body []byte) *noteOut {
	n := &noteOut{kind: kind, pos: pos, prio: prio, body: body, typ: uint8(h.types.slot(wire.NoteBodyType(body)))}
	if rest, ok := bytes.CutPrefix(body, []byte(`{"nid":"`)); ok {
		if i := bytes.IndexByte(rest, '"'); i > 0 {
			n.nid = string(rest[:i])
		}
	}
	return n
}

// connInbox is a connection's state for one of its inboxes (under conn.mu).
type connInbox struct {
	ib   engine.Inbox
	seen wire.Pos // the highest position queued or written: older pushes are duplicates
	// resume is the watermark: every note of the inbox up to it was written to
	// the device (or the device had it: its inbox cursor). Valid once the device
	// resumed (hasResume); frozen while gap (a note was shed) until it resumes again.
	resume    wire.Pos
	hasResume bool
	gap       bool
	epoch     uint64     // bumped by each resume: a writer's older watermark is void
	resuming  bool       // a backlog read is in flight: live pushes wait in held
	tracking  bool       // the device resumed or was pushed a note: a gap is worth a read
	held      []*noteOut // bounded by MaxPendingNotes
	recent    [16]sentNote
	recentN   int
}

type sentNote struct {
	pos   wire.Pos
	nid   string
	typ   uint8 // slot in noteHub.types
	prio  wire.Priority
	acked bool
}

func (ci *connInbox) remember(n *noteOut) {
	for _, r := range ci.recent {
		if r.pos == n.pos {
			return // sent again (a backlog and a push): one ack counts
		}
	}
	ci.recent[ci.recentN%len(ci.recent)] = sentNote{pos: n.pos, nid: n.nid, typ: n.typ, prio: n.prio}
	ci.recentN++
}

// ackOnce returns the recently sent note at p the first time it is acked, a
// zero sentNote after that or for a note no longer in the ring.
func (ci *connInbox) ackOnce(p wire.Pos) sentNote {
	for i := range ci.recent {
		if r := &ci.recent[i]; r.pos == p && !r.acked {
			r.acked = true
			return *r
		}
	}
	return sentNote{}
}

// inbox returns c's state for kind (nil: c holds no such inbox). Caller holds c.mu.
func (c *conn) inbox(kind byte) *connInbox {
	for _, ci := range c.inboxes {
		if ci != nil && ci.ib.Kind == kind {
			return ci
		}
	}
	return nil
}

// offerNote queues n for the device unless it is a duplicate, or shed. live
// notes come from pushes; backlog notes from a resume.
func (c *conn) offerNote(n *noteOut, live bool) { c.offerNoteGap(n, live, live) }

// offerNoteGap is offerNote; gapCheck is false for pushes held during a backlog read
// that just ran: a prev the read did not return (it expired) must not start
// another read for ever.
func (c *conn) offerNoteGap(n *noteOut, live, gapCheck bool) {
	s := c.s
	c.mu.Lock()
	ci := c.inbox(n.kind)
	if !c.state.live() || ci == nil {
		c.mu.Unlock()
		return
	}
	if live && ci.resuming {
		if len(ci.held) < s.cfg.MaxPendingNotes {
			ci.held = append(ci.held, n)
		} else {
			ci.gap = true // the resume's backlog may not reach it: resume again later
		}
		c.mu.Unlock()
		return
	}
	if live && !ci.seen.Less(n.pos) {
		c.mu.Unlock()
		s.metrics.noteDuplicates.Inc()
		return
	}
	if gapCheck && ci.tracking && ci.seen.Less(n.prev) {
		// The device has not seen the note before this one: read the
		// backlog from what it has seen first; this push waits for it.
		ci.resuming, ci.held = true, append(ci.held[:0], n)
		c.mu.Unlock()
		s.metrics.noteGaps.Inc()
		s.notes.queueResync(resyncReq{c: c, ci: ci})
		return
	}
	ci.tracking = true
	if ci.seen.Less(n.pos) {
		ci.seen = n.pos
	}
	pending := 0
	for _, q := range c.notes {
		pending += len(q)
	}
	// Only live pushes are shed: a backlog (at most 2*InboxLen notes, which
	// MaxPendingNotes exceeds) always fits, or a resume could shed again what
	// the last one shed.
	shed := live && n.prio == wire.PriorityLow && (pending >= s.cfg.MaxPendingNotes/2 || s.notes.overloaded())
	if !shed && pending >= s.cfg.MaxPendingNotes {
		if q := c.notes[wire.PriorityLow]; len(q) > 0 { // make room: the oldest low goes
			c.notes[wire.PriorityLow] = q[1:]
			s.notes.pendingBytes.Add(-int64(len(q[0].body)))
			if lo := c.inbox(q[0].kind); lo != nil {
				lo.gap = true
			}
			s.metrics.notesShed.Inc()
		} else {
			// Nothing to shed and the device does not read: close it; it
			// reconnects and resumes from its cursor.
			c.mu.Unlock()
			s.metrics.slowConsumerCloses.Inc()
			c.kill()
			return
		}
	}
	if shed {
		ci.gap = true
		c.mu.Unlock()
		s.metrics.notesShed.Inc()
		return
	}
	c.notes[n.prio] = append(c.notes[n.prio], n)
	ci.remember(n) // before it is written: its ack may come back at once
	s.notes.pendingBytes.Add(int64(len(n.body)))
	enqueue := !c.queued
	c.queued = true
	c.mu.Unlock()
	if enqueue {
		s.writers.push(c, n.prio >= wire.PriorityHigh)
	}
}

// overloaded: low pushes are shed while the writers are behind or too many note
// bytes wait on connections.
func (h *noteHub) overloaded() bool {
	return h.pendingBytes.Load() > h.s.cfg.ShedNoteBytes || h.s.writers.waiting() > h.s.cfg.ShedWaiting
}

// resumeInboxes handles {"op":"inbox"}: for each inbox c holds, drop what is
// queued for it, hold live pushes, read the backlog after the device's cursor
// and queue it, then the held pushes. Runs in its own goroutine (bounded by the
// resume semaphore).
func (c *conn) resumeInboxes(after wire.After) {
	c.mu.Lock()
	var todo []*connInbox
	for _, ci := range c.inboxes {
		if ci == nil {
			continue
		}
		ci.resuming, ci.held = true, ci.held[:0]
		ci.resume, ci.hasResume, ci.gap, ci.tracking = after.Get(ci.ib.Kind), true, false, true
		ci.epoch++
		ci.seen = ci.resume
		c.dropQueued(ci.ib.Kind)
		todo = append(todo, ci)
	}
	c.mu.Unlock()
	for _, ci := range todo {
		if err := c.readBacklog(ci, after.Get(ci.ib.Kind)); err != nil {
			c.sendControl(wire.AppendError(nil, wire.CodeUnavailable, "cannot read the inbox now; send the inbox op again later"), 0, "")
		}
	}
}

// resyncInbox queues a re-read of c's inbox ib after what it has seen (the push
// subscription of its shard was down for a while), if the device tracks it.
func (c *conn) resyncInbox(ib engine.Inbox) {
	c.mu.Lock()
	ci := c.inbox(ib.Kind)
	ok := c.state.live() && ci != nil && ci.ib == ib && ci.tracking && !ci.resuming
	if ok {
		ci.resuming, ci.held = true, ci.held[:0]
	}
	c.mu.Unlock()
	if ok {
		c.s.notes.queueResync(resyncReq{c: c, ci: ci})
	}
}

// runResync reads r's inbox after what its device has seen (resuming is set).
// On failure it is queued again after a jittered backoff; the device is told
// nothing (it asked for nothing).
func (c *conn) runResync(r resyncReq) {
	c.mu.Lock()
	from := r.ci.seen
	closed := !c.state.live()
	c.mu.Unlock()
	var err error
	if !closed {
		err = c.readBacklog(r.ci, from)
	}
	h := c.s.notes
	if err == nil || closed {
		h.rmu.Lock()
		delete(h.resyncIn, r.ci)
		h.rmu.Unlock()
		return
	}
	wait := c.s.jitterBetween(time.Second, 2*time.Second) << min(r.attempt, 4)
	time.AfterFunc(wait, func() {
		c.mu.Lock()
		alive := c.state.live()
		if alive && !r.ci.resuming { // (a gap may have set it meanwhile: keep what it holds)
			r.ci.resuming, r.ci.held = true, r.ci.held[:0]
		}
		c.mu.Unlock()
		if !alive {
			h.rmu.Lock()
			delete(h.resyncIn, r.ci)
			h.rmu.Unlock()
			return
		}
		h.queueResync(resyncReq{c: r.c, ci: r.ci, attempt: r.attempt + 1})
	})
}

// dropQueued removes c's queued notes of one inbox. Caller holds c.mu.
func (c *conn) dropQueued(kind byte) {
	for p := range c.notes {
		q := c.notes[p][:0]
		for _, n := range c.notes[p] {
			if n.kind == kind {
				c.s.notes.pendingBytes.Add(-int64(len(n.body)))
				continue
			}
			q = append(q, n)
		}
		clear(c.notes[p][len(q):])
		c.notes[p] = q
	}
}

// readBacklog reads ci's inbox after pos and queues it, then what was held.
// On an error nothing is queued: what the device missed is still in the inbox
// (the caller resumes or resyncs again).
func (c *conn) readBacklog(ci *connInbox, after wire.Pos) error {
	s := c.s
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	var notes []engine.StoredNote
	err := func() error {
		if reg := s.notes.registered(ci.ib); reg != nil {
			select {
			case <-reg:
			case <-ctx.Done():
				return fmt.Errorf("registration of %s not written in time", ci.ib)
			}
		}
		from := after
		for len(notes) < s.cfg.InboxLen {
			page, err := s.eng.ReadInbox(ctx, ci.ib, from, min(100, s.cfg.InboxLen-len(notes)))
			if err != nil {
				return err
			}
			notes = append(notes, page...)
			if len(page) < 100 {
				return nil
			}
			from = page[len(page)-1].Pos
		}
		return nil
	}()
	c.mu.Lock()
	held := ci.held
	ci.held, ci.resuming = nil, false
	if err != nil {
		ci.gap = true // what it missed is still in the inbox: resume again
		c.mu.Unlock()
		s.metrics.engineErrors.Inc()
		s.log.Warn("inbox backlog not read", "inbox_kind", string(ci.ib.Kind), "err", err)
		return err
	}
	c.mu.Unlock()
	s.metrics.backlogNotes.Add(float64(len(notes)))
	for _, sn := range notes {
		c.offerNote(c.s.notes.newNoteOut(ci.ib.Kind, sn.Pos, wire.NoteBodyPriority(sn.Body), sn.Body), false)
	}
	for _, n := range held {
		c.offerNoteGap(n, true, false)
	}
	return nil
}

// noteBatch is what one flush writes of a connection's notes: highest priority
// first, each frame with the resume cursor it leaves the device at. An inbox's
// watermark moves to a note only once every note of the batch before it (same
// inbox) is written, since higher priorities may overtake. Writer only.
type noteBatch struct {
	notes []*noteOut
	view  [2]inboxView
	order [2][]wire.Pos
	next  [2]int
	done  map[noteKey]bool
	nids  []string
	buf   []byte
}

type noteKey struct {
	kind byte
	pos  wire.Pos
}

// inboxView is a writer's copy of one inbox's watermark for a batch.
type inboxView struct {
	valid bool // the device resumed this inbox: frames carry its watermark
	track bool // and it may advance (no gap)
	pos   wire.Pos
	epoch uint64
}

func kindIndex(kind byte) int {
	if kind == wire.InboxMember {
		return 0
	}
	return 1
}

func kindOf(i int) byte {
	if i == 0 {
		return wire.InboxMember
	}
	return wire.InboxDevice
}

func cmpPos(a, b wire.Pos) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// take moves c's queued notes into b, highest priority first. Caller holds c.mu.
func (b *noteBatch) take(c *conn) {
	b.notes = b.notes[:0]
	for p := wire.NumPriorities - 1; p >= 0; p-- {
		b.notes = append(b.notes, c.notes[p]...)
		clear(c.notes[p])
		c.notes[p] = c.notes[p][:0]
	}
	for i := range b.view {
		b.view[i] = inboxView{}
		b.order[i] = b.order[i][:0]
		b.next[i] = 0
		if ci := c.inbox(kindOf(i)); ci != nil && ci.hasResume {
			b.view[i] = inboxView{valid: true, track: !ci.gap, pos: ci.resume, epoch: ci.epoch}
		}
	}
	if len(b.notes) == 0 {
		return
	}
	for _, n := range b.notes {
		k := kindIndex(n.kind)
		b.order[k] = append(b.order[k], n.pos)
	}
	for k := range b.order {
		slices.SortFunc(b.order[k], cmpPos)
	}
	if b.done == nil {
		b.done = make(map[noteKey]bool)
	}
	clear(b.done)
}

// critical is how many of the batch's first notes are critical.
func (b *noteBatch) critical() int {
	i := 0
	for i < len(b.notes) && b.notes[i].prio == wire.PriorityCritical {
		i++
	}
	return i
}

// write writes notes [from, to) of the batch; false when the connection failed.
func (b *noteBatch) write(c *conn, slot *writerSlot, from, to int) bool {
	for _, n := range b.notes[from:to] {
		k := kindIndex(n.kind)
		b.done[noteKey{n.kind, n.pos}] = true
		for b.next[k] < len(b.order[k]) && b.done[noteKey{n.kind, b.order[k][b.next[k]]}] {
			if b.view[k].track {
				b.view[k].pos = b.order[k][b.next[k]]
			}
			b.next[k]++
		}
		var a wire.After
		for i := range b.view {
			if b.view[i].valid {
				a.Set(kindOf(i), b.view[i].pos)
			}
		}
		b.buf = wire.AppendNote(b.buf[:0], wire.Cursor{Kind: n.kind, Pos: n.pos}, n.body, a.String())
		c.s.notes.pendingBytes.Add(-int64(len(n.body)))
		if !c.write(slot, b.buf) {
			return false
		}
		if n.nid != "" {
			b.nids = append(b.nids, n.nid)
		}
	}
	return true
}

// commit records the batch's watermarks and sends on c and in the counts.
func (b *noteBatch) commit(c *conn) {
	if len(b.notes) == 0 {
		return
	}
	c.s.notes.countSent(b.nids, b.notes)
	for _, n := range b.notes {
		c.s.metrics.notesSent[n.prio].Inc()
	}
	b.nids = b.nids[:0]
	c.mu.Lock()
	for k := range b.view {
		if ci := c.inbox(kindOf(k)); ci != nil && b.view[k].track && !ci.gap && ci.epoch == b.view[k].epoch && ci.resume.Less(b.view[k].pos) {
			ci.resume = b.view[k].pos
		}
	}
	c.mu.Unlock()
	clear(b.notes)
	b.notes = b.notes[:0]
}

// handleInbox answers {"op":"inbox"} (frame processing).
func (c *conn) handleInbox(after wire.After) {
	s := c.s
	c.mu.Lock()
	has := c.inboxes[0] != nil || c.inboxes[1] != nil
	c.mu.Unlock()
	switch {
	case !has:
		s.metrics.resumes.WithLabelValues("no_inbox").Inc()
		c.sendError(wire.CodeUnauthorized, "no inbox on this connection: connect with a device token (its mid names the member)")
		return
	case !windowAllow(s.cfg.Now(), &c.inboxWin, &c.inboxCount, s.cfg.ResumeBudget):
		s.metrics.resumes.WithLabelValues("rate_limited").Inc()
		c.sendError(wire.CodeRateLimited, fmt.Sprintf("more than %d inbox ops a minute", s.cfg.ResumeBudget))
		return
	}
	select {
	case s.notes.resumes <- struct{}{}:
	default:
		s.metrics.resumes.WithLabelValues("busy").Inc()
		c.sendError(wire.CodeUnavailable, "too many inbox reads on this proxy; send the inbox op again later")
		return
	}
	s.metrics.resumes.WithLabelValues("ok").Inc()
	go func() {
		defer func() { <-s.notes.resumes }()
		c.resumeInboxes(after)
	}()
}

// ackNote records a device's note ack (frame processing) and returns what is
// wrong with it ("" when taken). An ack counts once per note per connection
// (hardening #5); a cursor past every note this connection queued names a note
// the device cannot have read, and marks nothing read.
func (c *conn) ackNote(cur wire.Cursor) string {
	c.mu.Lock()
	ci := c.inbox(cur.Kind)
	if ci == nil {
		c.mu.Unlock()
		return "ack for a note of an inbox this connection does not hold"
	}
	if ci.seen.Less(cur.Pos) {
		c.mu.Unlock()
		return "ack for note " + cur.String() + ", which this connection never sent"
	}
	ib, sn := ci.ib, ci.ackOnce(cur.Pos)
	c.mu.Unlock()
	c.s.notes.countAck(ib, cur.Pos, sn)
	return ""
}

// setInboxes gives c its inboxes: the token's member and device, or, without a
// token, the query's device where the deployment trusts device ids.
func (c *conn) setInboxes(member, device string, token bool) {
	if member != "" && wire.CheckRecipient("member", member) == nil {
		c.inboxes[0] = &connInbox{ib: engine.Inbox{Kind: wire.InboxMember, ID: member}}
	}
	if (token || c.s.cfg.TrustDeviceIDs) && device != "" && wire.CheckRecipient("device", device) == nil {
		c.inboxes[1] = &connInbox{ib: engine.Inbox{Kind: wire.InboxDevice, ID: device}}
	}
}

// resumesInFlight is the number of backlog reads running.
func (h *noteHub) resumesInFlight() int { return len(h.resumes) }
