package proxy

import (
	"fmt"

	"github.com/stagecast/stagecast/internal/wire"
)

// The device's notification frames: inbox (resume) and note acks.

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
