package proxy

import (
	"slices"

	"github.com/stagecast/stagecast/internal/wire"
)

// The writer's side: one flush's batch of a connection's notes, written
// highest priority first, each frame with the resume cursor it leaves.

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
