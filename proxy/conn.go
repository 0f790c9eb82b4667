package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// conn is one device connection.
type conn struct {
	s        *Server
	ws       *websocket.Conn
	device   string
	platform string
	segment  string
	label    string        // platform as a metric label (a fixed set)
	plat     uint8         // label's index in platformNames
	cell     uint16        // (platform, segment) cell of the delivery counters (segments.go)
	sampled  bool          // Config.SampleDevice chose it (set before publish, read-only after)
	ip       netip.Addr    // source address; counted in Server.perIP unless exempt
	ipLimit  bool          // counted toward MaxConnsPerIP
	events   wire.Patterns // events the token allows (nil: any)

	handled chan bool // a frame handler's answer to this conn's reader

	// Budgets, touched only by whoever processes this conn's frames (its reader,
	// then one frame handler or sub goroutine at a time: see readLoop).
	subWin, errWin, inboxWin       time.Time
	subCount, errCount, inboxCount int
	errored                        bool // the frame being processed earned an error frame

	// The ping wheel's place for c (pinger.go), guarded by Server.pings.mu;
	// pinging is set while a ping waits for its pong.
	pingSlot, pingIdx int32
	pinging           atomic.Bool

	mu        sync.Mutex                     // guards the fields below
	expTimer  *time.Timer                    // closes with 4003 at the token's exp (nil without a token)
	subs      []subEntry                     // one per subscribed event; small, scanned linearly
	inboxes   [2]*connInbox                  // member and device inbox (nil: none)
	notes     [wire.NumPriorities][]*noteOut // queued notes per priority
	ctrl      [][]byte                       // control frames (error, reconnect) waiting for the writer
	queued    bool                           // in the writer queue or being written by a writer
	state     connState                      // where c is in its life (state.go)
	closeCode wire.CloseCode                 // connClosing: the status to close with once the mailbox drains
	closeMsg  string                         // and its reason

	// Frame rate limiting (reader goroutine only).
	winStart time.Time
	winCount int
}

// subEntry is the conn's state for one event: the highest version handed to the
// writer (or held by the device), the pending frame (mailbox: latest wins), and
// the highest version acked.
type subEntry struct {
	t       *topic
	v       uint64
	pending *prepared
	acked   uint64
}

// subByEvent returns c's entry for event. Caller holds c.mu.
func (c *conn) subByEvent(event string) *subEntry {
	for i := range c.subs {
		if c.subs[i].t.event == event {
			return &c.subs[i]
		}
	}
	return nil
}

// sub returns c's entry for t. Caller holds c.mu.
func (c *conn) sub(t *topic) *subEntry {
	for i := range c.subs {
		if c.subs[i].t == t {
			return &c.subs[i]
		}
	}
	return nil
}

// offer puts p in c's mailbox if c is subscribed to t, matches p's target and does
// not already have p's version or newer; a pending older frame is replaced (a slow
// device skips to the latest). It never blocks on the device. It reports
// whether p was put in the mailbox.
func (c *conn) offer(t *topic, p *prepared) bool {
	if !p.stage.Target.Matches(c.platform, c.segment) {
		return false
	}
	c.mu.Lock()
	e := c.sub(t)
	if !c.state.live() || e == nil || p.stage.V <= e.v {
		c.mu.Unlock()
		return false
	}
	if e.pending != nil {
		c.s.metrics.skipped.Inc()
	}
	e.v = p.stage.V
	e.pending = p
	enqueue := !c.queued
	c.queued = true
	c.mu.Unlock()
	if enqueue {
		c.s.writers.push(c, p.critical)
	}
	return true
}

// maxCtrl bounds the control frames waiting for a conn's writer.
const maxCtrl = 32

// sendControl queues a control frame (error, reconnect) for the writer; a
// closeWith status other than 0 moves c to connClosing: the writer closes
// with it once the mailbox is drained.
func (c *conn) sendControl(frame []byte, closeWith wire.CloseCode, reason string) {
	c.mu.Lock()
	if !c.state.live() {
		c.mu.Unlock()
		return
	}
	// Bounded: at most maxCtrl frames wait (a sub of MaxSubscriptions events can
	// earn one error each); past that a device that does not read loses error
	// frames, and ErrorBudget closes it soon after.
	if frame != nil && len(c.ctrl) < maxCtrl {
		c.ctrl = append(c.ctrl, frame)
	}
	if closeWith != 0 {
		c.state = c.state.to(connClosing)
		c.closeCode, c.closeMsg = closeWith, reason
	}
	enqueue := !c.queued
	c.queued = true
	c.mu.Unlock()
	if enqueue {
		c.s.writers.push(c, false)
	}
}

// flush is run by a writer goroutine that owns c's writes: it drains the mailbox
// until it finds it empty.
func (c *conn) flush(w *writer) {
	var ctrl [][]byte
	w.slot.cur.Store(c)
	defer w.slot.cur.Store(nil)
	for {
		batch := w.batch[:0]
		ctrl = ctrl[:0]
		c.mu.Lock()
		if !c.state.live() {
			c.queued = false
			c.mu.Unlock()
			return
		}
		ctrl = append(ctrl, c.ctrl...)
		clear(c.ctrl)
		c.ctrl = c.ctrl[:0]
		for i := range c.subs {
			if p := c.subs[i].pending; p != nil {
				batch = append(batch, p)
				c.subs[i].pending = nil
			}
		}
		nb := &w.nb
		nb.take(c)
		var closing wire.CloseCode
		reason := ""
		if c.state == connClosing {
			closing, reason = c.closeCode, c.closeMsg
		}
		if len(batch) == 0 && len(nb.notes) == 0 && len(ctrl) == 0 && closing == 0 {
			c.queued = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		// Priority order: critical stages, critical notes, other stages, then
		// high, normal and low notes, then control frames.
		for pass := 0; pass < 2; pass++ {
			for _, p := range batch {
				if p.critical != (pass == 0) {
					continue
				}
				if !c.write(w.slot, p.frame) {
					return
				}
				lat := c.s.cfg.Now().UnixMilli() - p.stage.TS
				w.recordSend(p.stats, lat, c.plat, c.cell)
				if c.sampled {
					c.sample(DeviceSample{Kind: "stage", Event: p.stage.Event, V: p.stage.V, LatencyMS: lat})
				}
			}
			from, to := 0, nb.critical()
			if pass == 1 {
				from, to = to, len(nb.notes)
			}
			if !nb.write(c, w.slot, from, to) {
				return
			}
		}
		nb.commit(c)
		for _, f := range ctrl {
			if !c.write(w.slot, f) {
				return
			}
		}
		if closing != 0 {
			c.mu.Lock()
			c.queued = false
			c.mu.Unlock()
			// Close does the handshake and can block for seconds: not on a writer.
			c.closeWith(closing, reason)
			return
		}
	}
}

// write sends one text frame. The write deadline is enforced by the writer
// pool's monitor (see writerPool): context.Background means no per-write context
// or timer.
func (c *conn) write(slot *writerSlot, frame []byte) bool {
	seq := slot.seq.Add(1)
	err := c.ws.Write(context.Background(), websocket.MessageText, frame)
	if err == nil {
		return true
	}
	if slot.killed.Load() == seq {
		c.s.log.Debug("slow consumer closed", "device", c.device, "write_timeout", c.s.cfg.WriteTimeout.String())
	} else if !errors.Is(err, net.ErrClosed) {
		c.s.metrics.writeErrors.Inc()
	}
	c.kill()
	return false
}

// ping runs from the ping wheel in its own goroutine (c.pinging set).
func (c *conn) ping() {
	defer c.pinging.Store(false)
	c.mu.Lock()
	live := c.state.live()
	c.mu.Unlock()
	if !live {
		return
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.PongTimeout)
	err := c.ws.Ping(ctx)
	cancel()
	if err != nil && c.s.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
		c.s.metrics.pingTimeouts.Inc()
		c.s.log.Debug("ping timeout", "device", c.device, "err", err)
		c.closeWith(wire.ClosePingTimeout, "ping timeout")
	}
}

// abort closes the TCP connection now (no handshake) and unregisters.
func (c *conn) abort() {
	_ = c.ws.CloseNow()
	c.unregister()
}

// kill moves c to connDead (no more offers or writes) and closes the TCP
// connection now. It takes no topic or hub lock: c's reader sees the socket
// fail and unregisters c. Writers use it, so a writer never waits on a topic's lock.
func (c *conn) kill() {
	c.mu.Lock()
	c.state = c.state.to(connDead)
	c.mu.Unlock()
	_ = c.ws.CloseNow()
}

// close unregisters c, then does the WebSocket close handshake with status and
// reason. The handshake blocks for up to ~10 s (coder/websocket's timeouts):
// run it in its own goroutine, through closeWith. The device is gone from every
// topic and count from the start.
func (c *conn) close(status wire.CloseCode, reason string) {
	c.unregister()
	_ = c.ws.Close(websocket.StatusCode(status), reason)
}

// closeWith closes the connection with a close frame (status, reason) when one
// of the proxy's handshake slots is free, else at once without one (the device
// then sees 1006). The slots bound the goroutines waiting on close handshakes
// (maxClosing), so a mass timeout cannot pile them up.
func (c *conn) closeWith(status wire.CloseCode, reason string) {
	select {
	case c.s.closing <- struct{}{}:
		go func() {
			defer func() { <-c.s.closing }()
			c.close(status, reason)
		}()
	default:
		c.kill() // the reader unregisters
	}
}

// stopTimers takes c off the ping wheel and stops its expiry timer.
func (c *conn) stopTimers() {
	c.s.pings.remove(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expTimer != nil {
		c.expTimer.Stop()
	}
}

// unregister removes c from every topic and the server; idempotent.
func (c *conn) unregister() {
	c.mu.Lock()
	if c.state == connGone {
		c.mu.Unlock()
		return
	}
	c.state = connGone
	reason, code := "closed", c.closeCode
	if code != 0 {
		reason = strconv.Itoa(int(code)) + " " + c.closeMsg
	}
	events := make([]string, len(c.subs))
	for i, e := range c.subs {
		events[i] = e.t.event
	}
	var inboxes []engine.Inbox
	for _, ci := range c.inboxes {
		if ci != nil {
			inboxes = append(inboxes, ci.ib)
		}
	}
	c.dropQueued(wire.InboxMember)
	c.dropQueued(wire.InboxDevice)
	c.mu.Unlock()
	c.stopTimers()
	c.s.act.disconnect(code)
	c.sample(DeviceSample{Kind: "disconnect", Reason: reason})
	for _, ev := range events {
		c.s.hub.unsubscribe(c, ev)
	}
	for _, ib := range inboxes {
		c.s.notes.leave(c, ib)
	}
	c.s.removeConn(c)
}

// frameVerdict is allowFrame's answer.
type frameVerdict uint8

const (
	frameOK      frameVerdict = iota // under the limit
	frameLimited                     // over MaxFramesPerSecond: answer rate_limited, skip the frame
	frameFlood                       // over 10x the limit: close 1008
)

// allowFrame applies the per-connection frame rate limit (reader goroutine only).
func (c *conn) allowFrame(now time.Time) frameVerdict {
	if now.Sub(c.winStart) >= time.Second {
		c.winStart, c.winCount = now, 0
	}
	c.winCount++
	switch {
	case c.winCount <= c.s.cfg.MaxFramesPerSecond:
		return frameOK
	case c.winCount <= 10*c.s.cfg.MaxFramesPerSecond:
		return frameLimited
	}
	return frameFlood
}

// ack records that the device applied version v of event.
func (c *conn) ack(event string, v uint64) bool {
	c.mu.Lock()
	var t *topic
	for i := range c.subs {
		e := &c.subs[i]
		if e.t.event == event {
			t = e.t
			if v <= e.acked {
				c.mu.Unlock()
				return true // duplicate ack: count once
			}
			e.acked = v
			break
		}
	}
	c.mu.Unlock()
	if t == nil {
		return false
	}
	t.mu.RLock()
	st := t.stats[v]
	t.mu.RUnlock()
	if st != nil {
		st.acked.Add(1)
		st.ackedBy[c.cell].Add(1)
		st.markDirty()
	}
	c.sample(DeviceSample{Kind: "ack", Event: event, V: v})
	c.s.metrics.acks.Inc()
	return true
}

// sendError queues an error frame about the frame being processed. Frame
// processing only.
func (c *conn) sendError(code wire.Code, msg string) {
	c.sendEventError(code, "", msg)
}

func (c *conn) sendEventError(code wire.Code, event, msg string) {
	c.s.metrics.badFrames.WithLabelValues(string(code)).Inc()
	c.errored = true
	if event != "" {
		c.sendControl(wire.AppendEventError(nil, code, event, msg), 0, "")
	} else {
		c.sendControl(wire.AppendError(nil, code, msg), 0, "")
	}
}

// endFrame charges a frame that earned any error frame to the ErrorBudget and
// closes the connection (1008) past it: a device that keeps sending bad frames
// is closed whether it reads the answers or not, so it can neither grow its
// queue nor hold a writer. Frame processing only.
func (c *conn) endFrame() {
	if !c.errored {
		return
	}
	c.errored = false
	if !windowAllow(c.s.cfg.Now(), &c.errWin, &c.errCount, c.s.cfg.ErrorBudget) {
		c.s.metrics.badFrames.WithLabelValues("error_budget").Inc()
		c.closeWith(wire.ClosePolicy, "too many bad frames")
	}
}

// windowAllow counts one more in a one-minute window starting at *start and
// reports whether the count is within limit.
func windowAllow(now time.Time, start *time.Time, count *int, limit int) bool {
	if now.Sub(*start) >= time.Minute {
		*start, *count = now, 0
	}
	*count++
	return *count <= limit
}
