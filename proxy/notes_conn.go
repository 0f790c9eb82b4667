package proxy

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// A connection's side of notifications: its inboxes, the notes queued for it
// per priority, the resume and resync reads of its backlog.

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
