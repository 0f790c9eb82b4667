package engine

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// memNotes is the memory engine's notification state, under Memory.nmu. Push
// handlers are called under it (they never block), which orders each inbox's
// appends and registrations as the Redis engine's scripts do.
type memNotes struct {
	inboxes map[Inbox]*memInbox
	subs    map[string]memNoteSub // proxy -> its push handler
	recs    map[string]*memNoteRec
	idem    map[string]memNoteIdem
	last    wire.Pos // the newest position handed out (positions rise across inboxes)
	nextSub int
}

type memInbox struct {
	notes []StoredNote // ascending by Pos, at most InboxLen
	idx   map[string]wire.Pos
	read  wire.Pos
	at    map[string]time.Time // registry: proxy -> expiry
}

type memNoteSub struct {
	id     int
	onPush func(NotePush)
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

func (m *Memory) notes() *memNotes {
	if m.n.inboxes == nil {
		m.n = memNotes{inboxes: make(map[Inbox]*memInbox), subs: make(map[string]memNoteSub),
			recs: make(map[string]*memNoteRec), idem: make(map[string]memNoteIdem)}
	}
	return &m.n
}

func (n *memNotes) inbox(ib Inbox) *memInbox {
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

// prune drops expired and surplus notes of b, and index entries that point at
// notes no longer kept.
func (b *memInbox) prune(nowMS int64, maxLen int) {
	keep := b.notes[:0]
	for _, sn := range b.notes {
		if sn.ExpMS > nowMS {
			keep = append(keep, sn)
		}
	}
	clear(b.notes[len(keep):])
	b.notes = keep
	if over := len(b.notes) - maxLen; over > 0 {
		b.notes = append(b.notes[:0], b.notes[over:]...)
	}
	if len(b.idx) > 2*maxLen {
		for k, p := range b.idx {
			if b.find(p) < 0 {
				delete(b.idx, k)
			}
		}
	}
}

func (b *memInbox) find(p wire.Pos) int {
	i := sort.Search(len(b.notes), func(i int) bool { return !b.notes[i].Pos.Less(p) })
	if i < len(b.notes) && b.notes[i].Pos == p {
		return i
	}
	return -1
}

// Notify stores the notification in every target's inbox and pushes it to the
// proxies registered for each inbox, each inbox in one step.
func (m *Memory) Notify(ctx context.Context, w NoteWrite) (NoteResult, error) {
	if err := ctx.Err(); err != nil {
		return NoteResult{}, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	now := m.cfg.Now()
	res := NoteResult{ID: w.ID}
	if w.IdempotencyKey != "" {
		for k, e := range n.idem {
			if !now.Before(e.exp) {
				delete(n.idem, k)
			}
		}
		if prev, ok := n.idem[w.IdempotencyKey]; ok {
			if prev.hash != w.BodyHash {
				return NoteResult{ID: prev.id}, ErrIdempotencyConflict
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
		meta, err := json.Marshal(NoteMeta(&w))
		if err != nil {
			return res, err
		}
		n.recs[res.ID] = &memNoteRec{meta: meta, exp: now.Add(w.Note.TTL)}
	}
	body := wire.AppendNoteBody(nil, res.ID, &w.Note, w.TS)
	nowMS := now.UnixMilli()
	for _, ib := range NoteTargets(&w) {
		b := n.inbox(ib)
		b.prune(nowMS, m.cfg.InboxLen)
		pos, seen := b.idx["i:"+res.ID]
		if !seen || b.find(pos) < 0 {
			if w.Note.DedupKey != "" {
				if old, ok := b.idx["k:"+w.Note.DedupKey]; ok {
					if i := b.find(old); i >= 0 {
						b.notes = append(b.notes[:i], b.notes[i+1:]...)
					}
				}
			}
			if seen { // the retry of a note that is gone: nothing to push
				res.Stored++
				continue
			}
			pos = n.nextPos(now)
			b.notes = append(b.notes, StoredNote{Pos: pos, Body: body, ExpMS: nowMS + w.Note.TTL.Milliseconds()})
			b.prune(nowMS, m.cfg.InboxLen)
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
				s.onPush(NotePush{Inbox: ib, Pos: pos, Priority: w.Note.Priority, Body: body})
			}
			res.Pushes++
		}
	}
	return res, nil
}

// Register adds (or refreshes) proxy's registration of the add inboxes for
// RegistryTTL and removes it from the remove inboxes.
func (m *Memory) Register(ctx context.Context, proxy string, add, remove []Inbox) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	exp := m.cfg.Now().Add(RegistryTTL)
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
func (m *Memory) SubscribeNotes(ctx context.Context, proxy string, onPush func(NotePush), onSubscribed func(shard int)) error {
	m.nmu.Lock()
	n := m.notes()
	n.nextSub++
	sub := memNoteSub{id: n.nextSub, onPush: onPush}
	n.subs[proxy] = sub
	m.nmu.Unlock()
	if onSubscribed != nil {
		for k := 0; k < NoteShards; k++ {
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

// ReadInbox returns up to limit unexpired notes of ib after position after, oldest first.
func (m *Memory) ReadInbox(ctx context.Context, ib Inbox, after wire.Pos, limit int) ([]StoredNote, error) {
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
	var out []StoredNote
	for _, sn := range b.notes {
		if after.Less(sn.Pos) && sn.ExpMS > nowMS {
			out = append(out, sn)
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// MarkRead records, per inbox, that its notes up to the position were read.
func (m *Memory) MarkRead(ctx context.Context, marks map[Inbox]wire.Pos) error {
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
func (m *Memory) PutNoteDelivery(ctx context.Context, counts map[string]NoteCount) error {
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
func (m *Memory) NoteReport(ctx context.Context, id string) (NoteReport, error) {
	if err := ctx.Err(); err != nil {
		return NoteReport{}, err
	}
	m.nmu.Lock()
	defer m.nmu.Unlock()
	n := m.notes()
	r := n.recs[id]
	if r == nil || !m.cfg.Now().Before(r.exp) {
		return NoteReport{}, ErrNoteNotFound
	}
	rep, targets, err := ReportFromMeta(id, r.meta)
	if err != nil {
		return NoteReport{}, err
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
