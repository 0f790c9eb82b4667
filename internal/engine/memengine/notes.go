package memengine

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// memNotes is the memory engine's notification state, under Engine.nmu. Push
// handlers are called under it (they never block), which orders each inbox's
// appends and registrations as the Redis engine's scripts do.
type memNotes struct {
	inboxes map[engine.Inbox]*memInbox
	subs    map[string]memNoteSub // proxy -> its push handler
	recs    map[string]*memNoteRec
	idem    map[string]memNoteIdem
	last    wire.Pos // the newest position handed out (positions rise across inboxes)
	nextSub int
}

type memInbox struct {
	notes []memNote // ascending by Pos, at most InboxLen
	// idx holds "i:<nid>" and "k:<dedup key>" of kept notes only, as the Redis
	// engine's index does.
	idx  map[string]wire.Pos
	gone []string // the GoneRing note ids removed last, newest first
	read wire.Pos
	at   map[string]time.Time // registry: proxy -> expiry
}

type memNote struct {
	engine.StoredNote
	nid, key string
}

type memNoteSub struct {
	id     int
	onPush func(engine.NotePush)
}

type memNoteRec struct {
	meta        []byte
	sent, acked uint64
	exp         time.Time
}

type memNoteIdem struct {
	id, hash string
	exp      time.Time
}

func (m *Engine) notes() *memNotes {
	if m.n.inboxes == nil {
		m.n = memNotes{inboxes: make(map[engine.Inbox]*memInbox), subs: make(map[string]memNoteSub),
			recs: make(map[string]*memNoteRec), idem: make(map[string]memNoteIdem)}
	}
	return &m.n
}

func (n *memNotes) inbox(ib engine.Inbox) *memInbox {
	b := n.inboxes[ib]
	if b == nil {
		b = &memInbox{idx: make(map[string]wire.Pos), at: make(map[string]time.Time)}
		n.inboxes[ib] = b
	}
	return b
}

// nextPos returns a position after every earlier one: <now ms>-<seq>, as a Redis
// stream id.
func (n *memNotes) nextPos(now time.Time) wire.Pos {
	ms := uint64(now.UnixMilli())
	if ms > n.last.MS {
		n.last = wire.Pos{MS: ms}
	} else {
		n.last.Seq++
	}
	return n.last
}

// prune drops surplus notes of b (the oldest first), keeping room for add
// more, and notes older than maxAge, with their index fields.
func (b *memInbox) prune(nowMS int64, maxLen, add int, maxAge time.Duration) {
	cut := uint64(nowMS - maxAge.Milliseconds())
	drop := 0
	for drop < len(b.notes) && (len(b.notes)-drop > maxLen-add || b.notes[drop].Pos.MS < cut) {
		drop++
	}
	for _, n := range b.notes[:drop] {
		b.unindex(n)
	}
	b.notes = append(b.notes[:0], b.notes[drop:]...)
}

// unindex removes a removed note's index fields and remembers its id.
func (b *memInbox) unindex(n memNote) {
	delete(b.idx, "i:"+n.nid)
	if n.key != "" && b.idx["k:"+n.key] == n.Pos {
		delete(b.idx, "k:"+n.key)
	}
	b.gone = append([]string{n.nid}, b.gone[:min(len(b.gone), engine.GoneRing-1)]...)
}

func (b *memInbox) find(p wire.Pos) int {
	i := sort.Search(len(b.notes), func(i int) bool { return !b.notes[i].Pos.Less(p) })
	if i < len(b.notes) && b.notes[i].Pos == p {
		return i
	}
	return -1
}

// NotifyMany is Notify for each of ws, in order, each with its own outcome.
func (m *Engine) NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome {
	out := make([]engine.NoteOutcome, len(ws))
	for i := range ws {
		out[i].Res, out[i].Err = m.Notify(ctx, ws[i])
	}
	return out
}

// Notify stores the notification in every target's inbox and pushes it to the
// proxies registered for each inbox, each inbox in one step.
func (m *Engine) Notify(ctx context.Context, w engine.NoteWrite) (engine.NoteResult, error) {
	if err := ctx.Err(); err != nil {
		return engine.NoteResult{}, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	now := m.cfg.Now()
	res := engine.NoteResult{ID: w.ID}
	if w.IdempotencyKey != "" {
		for k, e := range n.idem {
			if !now.Before(e.exp) {
				delete(n.idem, k)
			}
		}
		if prev, ok := n.idem[w.IdempotencyKey]; ok {
			if prev.hash != w.BodyHash {
				return engine.NoteResult{ID: prev.id}, engine.ErrIdempotencyConflict
			}
			res.ID, res.Replayed = prev.id, true
		} else {
			n.idem[w.IdempotencyKey] = memNoteIdem{id: w.ID, hash: w.BodyHash, exp: now.Add(m.cfg.IdempotencyTTL)}
		}
	}
	for id, r := range n.recs {
		if !now.Before(r.exp) {
			delete(n.recs, id)
		}
	}
	if _, ok := n.recs[res.ID]; !ok {
		meta, err := json.Marshal(engine.NoteMeta(&w))
		if err != nil {
			return res, err
		}
		n.recs[res.ID] = &memNoteRec{meta: meta, exp: now.Add(w.Note.TTL)}
	}
	body := wire.AppendNoteBody(nil, res.ID, &w.Note, w.TS)
	nowMS := now.UnixMilli()
	for _, ib := range engine.NoteTargets(&w) {
		b := n.inbox(ib)
		var prev wire.Pos
		pos, seen := b.idx["i:"+res.ID]
		if seen {
			if i := b.find(pos); i < 0 {
				continue // the retry of a note that is gone: nothing to push
			} else if i > 0 {
				prev = b.notes[i-1].Pos
			}
		} else {
			if slices.Contains(b.gone, res.ID) {
				continue
			}
			if w.Note.DedupKey != "" {
				if old, ok := b.idx["k:"+w.Note.DedupKey]; ok {
					if i := b.find(old); i >= 0 {
						b.unindex(b.notes[i])
						b.notes = append(b.notes[:i], b.notes[i+1:]...)
					}
				}
			}
			b.prune(nowMS, m.cfg.InboxLen, 1, wire.MaxNoteTTL)
			if len(b.notes) > 0 {
				prev = b.notes[len(b.notes)-1].Pos
			}
			pos = n.nextPos(now)
			b.notes = append(b.notes, memNote{engine.StoredNote{Pos: pos, Body: body, ExpMS: nowMS + w.Note.TTL.Milliseconds()}, res.ID, w.Note.DedupKey})
			b.idx["i:"+res.ID] = pos
			if w.Note.DedupKey != "" {
				b.idx["k:"+w.Note.DedupKey] = pos
			}
		}
		res.Stored++
		for px, exp := range b.at {
			if !now.Before(exp) {
				delete(b.at, px)
				continue
			}
			if s, ok := n.subs[px]; ok {
				s.onPush(engine.NotePush{Inbox: ib, Pos: pos, Prev: prev, Priority: w.Note.Priority, Body: body})
			}
			res.Pushes++
		}
	}
	return res, nil
}

// Register adds (or refreshes) proxy's registration of the add inboxes for
// RegistryTTL and removes it from the remove inboxes.
func (m *Engine) Register(ctx context.Context, proxy string, add, remove []engine.Inbox) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	exp := m.cfg.Now().Add(engine.RegistryTTL)
	for _, ib := range add {
		n.inbox(ib).at[proxy] = exp
	}
	for _, ib := range remove {
		if b := n.inboxes[ib]; b != nil {
			delete(b.at, proxy)
			if len(b.at) == 0 && len(b.notes) == 0 {
				delete(n.inboxes, ib)
			}
		}
	}
	return nil
}

// SubscribeNotes calls onSubscribed for every shard once pushes to proxy are
// delivered, then onPush for each, until ctx ends. It returns ctx's error.
func (m *Engine) SubscribeNotes(ctx context.Context, proxy string, onPush func(engine.NotePush), onSubscribed func(shard int)) error {
	m.nmu.Lock()
	n := m.notes()
	n.nextSub++
	sub := memNoteSub{id: n.nextSub, onPush: onPush}
	n.subs[proxy] = sub
	m.nmu.Unlock()
	if onSubscribed != nil {
		for k := 0; k < engine.NoteShards; k++ {
			onSubscribed(k)
		}
	}
	<-ctx.Done()
	m.nmu.Lock()
	if cur, ok := n.subs[proxy]; ok && cur.id == sub.id {
		delete(n.subs, proxy)
	}
	m.nmu.Unlock()
	return ctx.Err()
}

// InboxStats returns the sizes of ib's notes and index.
func (m *Engine) InboxStats(ctx context.Context, ib engine.Inbox) (engine.InboxStats, error) {
	if err := ctx.Err(); err != nil {
		return engine.InboxStats{}, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	b := m.notes().inboxes[ib]
	if b == nil {
		return engine.InboxStats{}, nil
	}
	f := len(b.idx)
	if !b.read.IsZero() {
		f++
	}
	if len(b.gone) > 0 {
		f++
	}
	return engine.InboxStats{Notes: len(b.notes), IndexFields: f}, nil
}

// ReadInbox returns up to limit unexpired notes of ib after position after, oldest first.
func (m *Engine) ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	b := m.notes().inboxes[ib]
	if b == nil || limit <= 0 {
		return nil, nil
	}
	nowMS := m.cfg.Now().UnixMilli()
	var out []engine.StoredNote
	for _, sn := range b.notes {
		if after.Less(sn.Pos) && sn.ExpMS > nowMS {
			out = append(out, sn.StoredNote)
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// MarkRead records, per inbox, that its notes up to the position were read.
func (m *Engine) MarkRead(ctx context.Context, marks map[engine.Inbox]wire.Pos) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	for ib, p := range marks {
		if b := m.notes().inboxes[ib]; b != nil && b.read.Less(p) {
			b.read = p
		}
	}
	return nil
}

// PutNoteDelivery adds a proxy's counts per notification id.
func (m *Engine) PutNoteDelivery(ctx context.Context, counts map[string]engine.NoteCount) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	for id, c := range counts {
		if r := n.recs[id]; r != nil {
			r.sent += c.Sent
			r.acked += c.Acked
		}
	}
	return nil
}

// NoteReport returns the delivery report of notification id.
func (m *Engine) NoteReport(ctx context.Context, id string) (engine.NoteReport, error) {
	if err := ctx.Err(); err != nil {
		return engine.NoteReport{}, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	r := n.recs[id]
	if r == nil || !m.cfg.Now().Before(r.exp) {
		return engine.NoteReport{}, engine.ErrNoteNotFound
	}
	rep, targets, err := engine.ReportFromMeta(id, r.meta)
	if err != nil {
		return engine.NoteReport{}, err
	}
	rep.Sent, rep.Acked = r.sent, r.acked
	nowMS := m.cfg.Now().UnixMilli()
	for _, ib := range targets {
		b := n.inboxes[ib]
		var pos wire.Pos
		var ok bool
		if b != nil {
			pos, ok = b.idx["i:"+id]
		}
		i := -1
		if ok {
			i = b.find(pos)
		}
		switch {
		case i < 0 || b.notes[i].ExpMS <= nowMS:
			rep.Gone++
		case !b.read.Less(pos):
			rep.Read++
		default:
			rep.Pending++
		}
	}
	return rep, nil
}
