package proxy

import (
	"context"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Notification counts: per note id for the notification reports (flushed to
// the engine with each delivery report), per type and priority for the
// analytics stream, and the read marks acks leave.

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
