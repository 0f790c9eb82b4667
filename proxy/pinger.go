package proxy

import (
	"sync"
	"time"
)

// pingSlots is how many slots the ping wheel turns through in one
// PingInterval: each connection sits in one slot, chosen at random when it
// joins, and is pinged each time the wheel reaches it.
const pingSlots = 32

// pingWheel pings every connection once per PingInterval from one goroutine
// and one ticker, instead of a runtime timer per connection (issue 22,
// item 2: memory per idle device).
//
// Invariants: a conn is in at most one slot, at slots[c.pingSlot][c.pingIdx],
// and c.pingSlot is -1 when it is in none; both fields are guarded by
// pingWheel.mu (not c.mu). A conn's ping runs in its own short goroutine; a
// conn whose ping is still waiting for its pong when its slot comes round is
// skipped (c.pinging), so at most one ping per conn is ever in flight.
type pingWheel struct {
	mu    sync.Mutex
	slots [pingSlots][]*conn
	next  int     // the slot the next tick pings
	due   []*conn // the tick's copy of its slot (run goroutine only)
}

// add puts c in slot (0 <= slot < pingSlots; the caller draws it at random,
// so c's first ping comes at a random moment of one PingInterval).
func (w *pingWheel) add(c *conn, slot int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.pingSlot >= 0 {
		return
	}
	c.pingSlot, c.pingIdx = int32(slot), int32(len(w.slots[slot]))
	w.slots[slot] = append(w.slots[slot], c)
}

// remove takes c out of its slot; a no-op when it is in none.
func (w *pingWheel) remove(c *conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.pingSlot < 0 {
		return
	}
	sl := w.slots[c.pingSlot]
	last := len(sl) - 1
	moved := sl[last]
	sl[c.pingIdx] = moved
	moved.pingIdx = c.pingIdx
	sl[last] = nil
	w.slots[c.pingSlot] = sl[:last]
	c.pingSlot, c.pingIdx = -1, 0
}

// pingLoop turns the wheel until the server stops.
func (s *Server) pingLoop() {
	defer s.wg.Done()
	w := &s.pings
	t := time.NewTicker(max(s.cfg.PingInterval/pingSlots, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		w.due = append(w.due[:0], w.slots[w.next]...)
		w.next = (w.next + 1) % pingSlots
		w.mu.Unlock()
		for i, c := range w.due {
			if c.pinging.CompareAndSwap(false, true) {
				go c.ping()
			}
			w.due[i] = nil
		}
	}
}
