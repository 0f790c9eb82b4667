package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/wire"
)

// conn is one device connection.
type conn struct {
	s        *Server
	ws       *websocket.Conn
	device   string
	platform string
	segment  string

	pingTimer *time.Timer // runtime timer; fires ping() in its own short goroutine
	handled   chan bool   // a frame handler's answer to this conn's reader

	mu      sync.Mutex // guards the fields below
	subs    []subEntry // one per subscribed event; small, scanned linearly
	ctrl    [][]byte   // control frames (error, reconnect) waiting for the writer
	queued  bool       // in the writer queue or being written by a writer
	closed  bool
	closing int // after the mailbox drains, close with this status (0: no)
	reason  string

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
// device skips to the latest). It never blocks on the device.
func (c *conn) offer(t *topic, p *prepared) {
	if !p.stage.Target.Matches(c.platform, c.segment) {
		return
	}
	c.mu.Lock()
	e := c.sub(t)
	if c.closed || e == nil || p.stage.V <= e.v {
		c.mu.Unlock()
		return
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
		c.s.writers.push(c)
	}
}

// sendControl queues a control frame (error, reconnect) for the writer.
func (c *conn) sendControl(frame []byte, closeWith int, reason string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.ctrl) < 8 { // bounded: a device that floods errors loses some error frames
		c.ctrl = append(c.ctrl, frame)
	}
	if closeWith != 0 {
		c.closing, c.reason = closeWith, reason
	}
	enqueue := !c.queued
	c.queued = true
	c.mu.Unlock()
	if enqueue {
		c.s.writers.push(c)
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
		if c.closed {
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
		closing, reason := c.closing, c.reason
		if len(batch) == 0 && len(ctrl) == 0 && closing == 0 {
			c.queued = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		for _, p := range batch {
			if !c.write(w.slot, p.frame) {
				return
			}
			w.recordSend(p.stats, c.s.cfg.Now().UnixMilli()-p.stage.TS)
		}
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
			go c.close(closing, reason)
			return
		}
	}
}

// write sends one text frame. The write deadline is enforced by the writer
// pool's monitor (see writerPool): context.Background means no per-write context
// or timer.
func (c *conn) write(slot *writerSlot, frame []byte) bool {
	slot.seq.Add(1)
	err := c.ws.Write(context.Background(), websocket.MessageText, frame)
	if err == nil {
		return true
	}
	if slot.killed.Swap(false) {
		c.s.log.Debug("slow consumer closed", "device", c.device, "write_timeout", c.s.cfg.WriteTimeout.String())
	} else if !errors.Is(err, net.ErrClosed) {
		c.s.metrics.writeErrors.Inc()
	}
	c.abort()
	return false
}

// ping runs from pingTimer in its own goroutine.
func (c *conn) ping() {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	ctx, cancel := context.WithTimeout(c.s.ctx, c.s.cfg.PongTimeout)
	err := c.ws.Ping(ctx)
	cancel()
	if err != nil {
		if c.s.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
			c.s.metrics.pingTimeouts.Inc()
			c.s.log.Debug("ping timeout", "device", c.device, "err", err)
			c.abort()
		}
		return
	}
	c.pingTimer.Reset(c.s.cfg.PingInterval)
}

// abort closes the TCP connection now (no handshake) and unregisters.
func (c *conn) abort() {
	_ = c.ws.CloseNow()
	c.unregister()
}

// close does the WebSocket close handshake with status and reason, then unregisters.
func (c *conn) close(status int, reason string) {
	_ = c.ws.Close(websocket.StatusCode(status), reason)
	c.unregister()
}

// unregister removes c from every topic and the server; idempotent.
func (c *conn) unregister() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	events := make([]string, len(c.subs))
	for i, e := range c.subs {
		events[i] = e.t.event
	}
	c.mu.Unlock()
	c.pingTimer.Stop()
	for _, ev := range events {
		c.s.hub.unsubscribe(c, ev)
	}
	c.s.removeConn(c)
}

// allowFrame applies the per-connection frame rate limit (reader goroutine only):
// 0 ok, 1 over the limit (answer rate_limited), 2 far over it (close).
func (c *conn) allowFrame(now time.Time) int {
	if now.Sub(c.winStart) >= time.Second {
		c.winStart, c.winCount = now, 0
	}
	c.winCount++
	switch {
	case c.winCount <= c.s.cfg.MaxFramesPerSecond:
		return 0
	case c.winCount <= 10*c.s.cfg.MaxFramesPerSecond:
		return 1
	}
	return 2
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
		st.markDirty()
	}
	c.s.metrics.acks.Inc()
	return true
}

func (c *conn) sendError(code wire.Code, msg string) {
	c.sendControl(wire.AppendError(nil, code, msg), 0, "")
}
