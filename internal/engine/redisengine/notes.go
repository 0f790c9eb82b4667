package redisengine

// Notifications on Redis. Layout per inbox I ("m:<member>" or "d:<device>"),
// every key and channel of one inbox under the hash tag {n<k>}, k = the inbox's
// shard (engine.NoteShards), so an inbox, its index, its registry entry and the
// push channels it publishes to live on one Cluster shard:
//
//	sc:{n<k>}:ib:<I>      stream of notes, ids "<ms>-<seq>" (the cursors), fields
//	                      b (body JSON), e (expiry, Unix ms), n (note id), k (dedup
//	                      key, if any); at most InboxLen entries, none older than
//	                      30 days; expires with its newest note
//	sc:{n<k>}:ix:<I>      hash: "i:<nid>" -> position, "k:<dedup_key>" -> position
//	                      (kept notes only), "read" -> the highest position acked,
//	                      "gone" -> the engine.GoneRing ids removed last
//	sc:{n<k>}:at:<I>      hash (the registry): proxy id -> expiry, Unix ms
//	sc:{n<k>}:px:<proxy>  sharded pub/sub channel: pushes to that proxy for the
//	                      inboxes of shard k
//
// Per notification id N: sc:{nr:N} hash (meta, sent, acked), kept for the note's
// TTL; per idempotency key K: sc:{ni:K} string "<N>\n<body hash>", 24 h.
//
// The append and the push decision are one Lua script per inbox: dedup, XADD,
// read the registry, SPUBLISH to each registered proxy. A note is never pushed
// unless stored, and a registration either precedes the script (the note is
// pushed) or follows it (the proxy's backlog read after registering finds it).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/rueidis"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

func shardTag(k int) string { return "sc:{n" + strconv.Itoa(k) + "}:" }

func inboxKey(ib engine.Inbox, what string) string {
	return shardTag(ib.Shard()) + what + ":" + ib.String()
}

func pushChannel(k int, proxy string) string { return shardTag(k) + "px:" + proxy }

func recKey(nid string) string  { return "sc:{nr:" + nid + "}" }
func idemKey(key string) string { return "sc:{ni:" + key + "}" }

// NewNoteID returns a random notification id (a wire id).
func NewNoteID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "n" + hex.EncodeToString(b[:])
}

// Notify stores the notification in every target inbox and pushes it to the
// proxies registered there (one script per inbox, pipelined).
func (e *Engine) Notify(ctx context.Context, w engine.NoteWrite) (engine.NoteResult, error) {
	o := e.NotifyMany(ctx, []engine.NoteWrite{w})[0]
	return o.Res, o.Err
}

// NotifyMany is Notify for each of ws, in two pipelines whatever their
// number: the idempotency keys (SET NX GET) if any have one, then every
// record and inbox script (and an EVAL pipeline for a node that answered
// NOSCRIPT). Each write has its
// own outcome; one failing never fails another. With WaitReplicas, each write
// waits for its replicas on a connection of its own (notifyDurable).
func (e *Engine) NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome {
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, e.cfg.OpTimeout+e.waitTimeout())
	} else {
		cancel = func() {}
	}
	defer cancel()
	out := make([]engine.NoteOutcome, len(ws))
	if len(ws) == 0 {
		return out
	}
	c := e.client
	if ws[0].Note.Priority >= wire.PriorityHigh { // a lane's writes share a priority
		c = e.fast
	}
	for i := range ws {
		out[i].Res.ID = ws[i].ID
	}
	e.claimIdempotency(ctx, c, ws, out)
	// One pipeline: every write's record (HSETNX, PEXPIRE), then the inbox
	// scripts. A write has a record in cmds iff at[i] >= 0: where its
	// scripts start in execs (or, with WaitReplicas, its index in durable).
	var cmds rueidis.Commands
	var execs []rueidis.LuaExec
	var durable [][]rueidis.LuaExec
	at := make([]int, len(ws))
	targets := make([][]engine.Inbox, len(ws))
	for i := range ws {
		w, o := &ws[i], &out[i]
		at[i] = -1
		if o.Err != nil {
			continue
		}
		meta, err := json.Marshal(engine.NoteMeta(w))
		if err != nil {
			o.Err = fmt.Errorf("notify: %w", err)
			continue
		}
		rk := recKey(o.Res.ID)
		cmds = append(cmds, c.B().Hsetnx().Key(rk).Field("meta").Value(string(meta)).Build(),
			c.B().Pexpire().Key(rk).Milliseconds(w.Note.TTL.Milliseconds()).Build())
		targets[i] = engine.NoteTargets(w)
		x := e.noteExecs(w, o.Res.ID, targets[i])
		if e.cfg.WaitReplicas > 0 {
			at[i] = len(durable)
			durable = append(durable, x)
			continue
		}
		at[i] = len(execs)
		execs = append(execs, x...)
	}
	// The records first (their replies are checked below); the scripts'
	// commands follow in the same pipeline.
	nrec := len(cmds)
	for _, x := range execs {
		cmds = append(cmds, notifyLua.evalsha(c, x))
	}
	replies := notifyLua.doMulti(ctx, c, cmds, nrec, execs)
	r := 0
	for i := range ws {
		if at[i] < 0 {
			continue
		}
		for _, rep := range replies[r : r+2] {
			if err := rep.Error(); err != nil && out[i].Err == nil {
				out[i].Err = fmt.Errorf("notify %s: record: %w", out[i].Res.ID, err)
			}
		}
		r += 2
	}
	var results [][]scriptOut // per write, its inboxes' script replies
	if e.cfg.WaitReplicas > 0 {
		results = e.notifyManyDurable(ctx, c, ws, out, at, durable)
	} else {
		results = make([][]scriptOut, len(ws))
		scripts := replies[nrec:]
		for i := range ws {
			if at[i] < 0 {
				continue
			}
			for _, rep := range scripts[at[i] : at[i]+len(targets[i])] {
				vals, err := rep.ToArray()
				results[i] = append(results[i], scriptOut{vals, err})
			}
		}
	}
	for i := range ws {
		if o := &out[i]; at[i] >= 0 && o.Err == nil {
			// (A failed record fails the write, to be retried under the same
			// id, even where its inboxes were written.)
			o.Err = tallyNote(&o.Res, targets[i], results[i])
		}
	}
	return out
}

// notifyManyDurable runs, for each write whose record was stored, its inbox
// scripts with WAIT (notifyDurable), up to 8 writes at once.
func (e *Engine) notifyManyDurable(ctx context.Context, c rueidis.Client, ws []engine.NoteWrite, out []engine.NoteOutcome, at []int, durable [][]rueidis.LuaExec) [][]scriptOut {
	results := make([][]scriptOut, len(ws))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range ws {
		if at[i] < 0 || out[i].Err != nil {
			continue // the record failed: nothing is written before a retry
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = e.notifyDurable(ctx, c, durable[at[i]])
		}()
	}
	wg.Wait()
	return results
}

// claimIdempotency takes each keyed write's idempotency key (SET NX GET, one
// pipeline): a key already held makes the write a replay of the note that
// holds it, or a conflict (a different body).
func (e *Engine) claimIdempotency(ctx context.Context, c rueidis.Client, ws []engine.NoteWrite, out []engine.NoteOutcome) {
	var cmds rueidis.Commands
	var idx []int
	for i := range ws {
		if w := &ws[i]; w.IdempotencyKey != "" {
			cmds = append(cmds, c.B().Set().Key(idemKey(w.IdempotencyKey)).Value(w.ID+"\n"+w.BodyHash).
				Nx().Get().Ex(e.cfg.IdempotencyTTL).Build())
			idx = append(idx, i)
		}
	}
	if len(cmds) == 0 {
		return
	}
	for k, r := range c.DoMulti(ctx, cmds...) {
		i := idx[k]
		prev, err := r.ToString()
		switch {
		case rueidis.IsRedisNil(err):
		case err != nil:
			out[i].Err = fmt.Errorf("notify: idempotency key: %w", err)
		default:
			id, hash, _ := strings.Cut(prev, "\n")
			out[i].Res.ID = id
			if hash != ws[i].BodyHash {
				out[i].Err = engine.ErrIdempotencyConflict
				continue
			}
			out[i].Res.Replayed = true
		}
	}
}

// noteExecs is one script exec per target inbox of w, stored as note id.
func (e *Engine) noteExecs(w *engine.NoteWrite, id string, targets []engine.Inbox) []rueidis.LuaExec {
	body := string(wire.AppendNoteBody(nil, id, &w.Note, w.TS))
	ttl := strconv.FormatInt(w.Note.TTL.Milliseconds(), 10)
	execs := make([]rueidis.LuaExec, len(targets))
	for i, ib := range targets {
		k := ib.Shard()
		execs[i] = rueidis.LuaExec{
			Keys: []string{inboxKey(ib, "ib"), inboxKey(ib, "ix"), inboxKey(ib, "at")},
			Args: []string{body, ttl, w.Note.DedupKey, id,
				strconv.Itoa(e.cfg.InboxLen), strconv.FormatInt(wire.MaxNoteTTL.Milliseconds(), 10),
				strconv.Itoa(int(w.Note.Priority)) + ib.String(), shardTag(k) + "px:", strconv.Itoa(engine.GoneRing)},
		}
	}
	return execs
}

// tallyNote counts one write's stored copies and pushes from its inboxes'
// script replies, and returns the first inbox's error.
func tallyNote(res *engine.NoteResult, targets []engine.Inbox, results []scriptOut) error {
	var firstErr error
	for i, r := range results {
		vals, err := r.vals, r.err
		if err == nil && len(vals) != 3 {
			err = fmt.Errorf("script returned %d values", len(vals))
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("notify %s: inbox %s: %w", res.ID, targets[i], err)
			}
			continue
		}
		n, _ := vals[1].AsInt64()
		if p, _ := vals[0].ToString(); p == "" {
			continue // a replay of a note that is gone from this inbox
		}
		res.Stored++
		res.Pushes += int(n)
	}
	return firstErr
}

// notifyDurable runs each inbox's script and then WAIT on one dedicated
// connection, concurrently across inboxes.
func (e *Engine) notifyDurable(ctx context.Context, c rueidis.Client, execs []rueidis.LuaExec) []scriptOut {
	out := make([]scriptOut, len(execs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range execs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			x := execs[i]
			err := c.Dedicated(func(dc rueidis.DedicatedClient) error {
				vals, err := dc.Do(ctx, dc.B().Eval().Script(notifySrc).Numkeys(int64(len(x.Keys))).Key(x.Keys...).Arg(x.Args...).Build()).ToArray()
				out[i].vals = vals
				if err != nil {
					return err
				}
				return e.waitReplicas(ctx, dc)
			})
			out[i].err = err
		}(i)
	}
	wg.Wait()
	return out
}

// Register registers (or refreshes) proxy for the add inboxes and removes it
// from the remove inboxes, pipelined.
func (e *Engine) Register(ctx context.Context, proxy string, add, remove []engine.Inbox) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	c := e.client
	ttl := strconv.FormatInt(engine.RegistryTTL.Milliseconds(), 10)
	var errs []error
	if len(add) > 0 {
		execs := make([]rueidis.LuaExec, len(add))
		for i, ib := range add {
			execs[i] = rueidis.LuaExec{Keys: []string{inboxKey(ib, "at")}, Args: []string{proxy, ttl}}
		}
		for _, r := range registerLua.ExecMulti(ctx, c, execs...) {
			if err := r.Error(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(remove) > 0 {
		cmds := make(rueidis.Commands, len(remove))
		for i, ib := range remove {
			cmds[i] = c.B().Hdel().Key(inboxKey(ib, "at")).Field(proxy).Build()
		}
		for _, r := range c.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("register %d, unregister %d inboxes: %d failed, first: %w", len(add), len(remove), len(errs), errs[0])
	}
	return nil
}

// SubscribeNotes holds one sharded subscription per notification shard for the
// pushes to proxy until ctx ends, each re-subscribed with jittered backoff when
// Redis drops it; onSubscribed(k) runs each time shard k's subscription lands.
func (e *Engine) SubscribeNotes(ctx context.Context, proxy string, onPush func(engine.NotePush), onSubscribed func(shard int)) error {
	var wg sync.WaitGroup
	for k := 0; k < engine.NoteShards; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			e.subscribeShard(ctx, k, proxy, onPush, onSubscribed)
		}(k)
	}
	wg.Wait()
	return ctx.Err()
}

func (e *Engine) subscribeShard(ctx context.Context, k int, proxy string, onPush func(engine.NotePush), onSubscribed func(int)) {
	ch := pushChannel(k, proxy)
	log := e.cfg.Logger.With("channel", ch)
	hookCtx := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
		if s.Kind == "ssubscribe" && onSubscribed != nil {
			onSubscribed(k)
		}
	})
	e.resubscribe(ctx, log, func() error {
		return e.client.Receive(hookCtx, e.client.B().Ssubscribe().Channel(ch).Build(), func(m rueidis.PubSubMessage) {
			p, err := parsePush(m.Message)
			if err != nil {
				log.Error("dropping malformed note push", "err", err)
				return
			}
			onPush(p)
		})
	})
}

// parsePush decodes "<priority digit><kind>:<id>\n<position>\n<prev>\n<body>".
func parsePush(s string) (engine.NotePush, error) {
	head, rest, ok1 := strings.Cut(s, "\n")
	pos, rest, ok2 := strings.Cut(rest, "\n")
	prev, body, ok3 := strings.Cut(rest, "\n")
	if !ok1 || !ok2 || !ok3 || len(head) < 4 || head[0] < '0' || head[0] > '3' || head[2] != ':' {
		return engine.NotePush{}, errors.New("not <priority><kind>:<id>\\n<pos>\\n<prev>\\n<body>")
	}
	p, err := wire.ParsePos(pos)
	if err != nil {
		return engine.NotePush{}, err
	}
	var pp wire.Pos
	if prev != "" {
		if pp, err = wire.ParsePos(prev); err != nil {
			return engine.NotePush{}, fmt.Errorf("prev: %w", err)
		}
	}
	kind := head[1]
	if kind != wire.InboxMember && kind != wire.InboxDevice {
		return engine.NotePush{}, fmt.Errorf("unknown inbox kind %q", kind)
	}
	return engine.NotePush{Inbox: engine.Inbox{Kind: kind, ID: head[3:]}, Pos: p, Prev: pp,
		Priority: wire.Priority(head[0] - '0'), Body: []byte(body)}, nil
}

// InboxStats returns the sizes of ib's stream and index (diagnostics: the
// index stays within 2 fields per kept note plus 2).
func (e *Engine) InboxStats(ctx context.Context, ib engine.Inbox) (engine.InboxStats, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	c := e.client
	res := c.DoMulti(ctx, c.B().Xlen().Key(inboxKey(ib, "ib")).Build(), c.B().Hlen().Key(inboxKey(ib, "ix")).Build())
	n, err := res[0].AsInt64()
	if err != nil {
		return engine.InboxStats{}, fmt.Errorf("inbox stats %s: %w", ib, err)
	}
	f, err := res[1].AsInt64()
	if err != nil {
		return engine.InboxStats{}, fmt.Errorf("inbox stats %s: %w", ib, err)
	}
	return engine.InboxStats{Notes: int(n), IndexFields: int(f)}, nil
}

// ReadInbox returns up to limit unexpired notes of ib after position after,
// oldest first, in at most 2 Redis calls.
func (e *Engine) ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error) {
	if limit <= 0 {
		return nil, nil
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	nowMS := e.cfg.Now().UnixMilli()
	var out []engine.StoredNote
	start := "-"
	if !after.IsZero() {
		start = "(" + after.String()
	}
	// Expired notes are skipped, so a page may need more than the first read.
	// At most 2 calls (hardening #4): the first reads a little more than the
	// page; if expired notes left it short, the second reads the rest of the
	// stream, which holds at most InboxLen notes.
	count := limit + 8
	for call := 0; call < 2; call++ {
		entries, err := e.client.Do(ctx, e.client.B().Xrange().Key(inboxKey(ib, "ib")).Start(start).End("+").Count(int64(count)).Build()).AsXRange()
		if err != nil {
			return nil, fmt.Errorf("read inbox %s: %w", ib, err)
		}
		for _, en := range entries {
			p, err := wire.ParsePos(en.ID)
			if err != nil {
				continue
			}
			exp, _ := strconv.ParseInt(en.FieldValues["e"], 10, 64)
			if exp > nowMS {
				out = append(out, engine.StoredNote{Pos: p, Body: []byte(en.FieldValues["b"]), ExpMS: exp})
				if len(out) == limit {
					return out, nil
				}
			}
		}
		if len(entries) < count {
			break
		}
		start = "(" + entries[len(entries)-1].ID
		count = max(e.cfg.InboxLen, limit)
	}
	return out, nil
}

// MarkRead records, per inbox, that its notes up to the position were read.
func (e *Engine) MarkRead(ctx context.Context, marks map[engine.Inbox]wire.Pos) error {
	if len(marks) == 0 {
		return nil
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	execs := make([]rueidis.LuaExec, 0, len(marks))
	for ib, p := range marks {
		execs = append(execs, rueidis.LuaExec{Keys: []string{inboxKey(ib, "ix")}, Args: []string{p.String()}})
	}
	for _, r := range markReadLua.ExecMulti(ctx, e.client, execs...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("mark %d inboxes read: %w", len(marks), err)
		}
	}
	return nil
}

// PutNoteDelivery adds a proxy's counts per notification id.
func (e *Engine) PutNoteDelivery(ctx context.Context, counts map[string]engine.NoteCount) error {
	if len(counts) == 0 {
		return nil
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	execs := make([]rueidis.LuaExec, 0, len(counts))
	for id, n := range counts {
		execs = append(execs, rueidis.LuaExec{Keys: []string{recKey(id)},
			Args: []string{strconv.FormatUint(n.Sent, 10), strconv.FormatUint(n.Acked, 10)}})
	}
	for _, r := range countLua.ExecMulti(ctx, e.client, execs...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("note delivery counts: %w", err)
		}
	}
	return nil
}

// NoteReport returns the delivery report of notification id.
func (e *Engine) NoteReport(ctx context.Context, id string) (engine.NoteReport, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	c := e.client
	rec, err := c.Do(ctx, c.B().Hgetall().Key(recKey(id)).Build()).AsStrMap()
	if err != nil {
		return engine.NoteReport{}, fmt.Errorf("note report %s: %w", id, err)
	}
	if rec["meta"] == "" {
		return engine.NoteReport{}, engine.ErrNoteNotFound
	}
	rep, targets, err := engine.ReportFromMeta(id, []byte(rec["meta"]))
	if err != nil {
		return engine.NoteReport{}, fmt.Errorf("note report %s: %w", id, err)
	}
	rep.Sent, _ = strconv.ParseUint(rec["sent"], 10, 64)
	rep.Acked, _ = strconv.ParseUint(rec["acked"], 10, 64)
	if len(targets) == 0 {
		return rep, nil
	}
	cmds := make(rueidis.Commands, len(targets))
	for i, ib := range targets {
		cmds[i] = c.B().Hmget().Key(inboxKey(ib, "ix")).Field("i:"+id, "read").Build()
	}
	type state struct {
		pos, read wire.Pos
		ok        bool
	}
	states := make([]state, len(targets))
	var reads rueidis.Commands
	var readIdx []int
	for i, r := range c.DoMulti(ctx, cmds...) {
		vals, err := r.ToArray()
		if err != nil || len(vals) != 2 {
			return engine.NoteReport{}, fmt.Errorf("note report %s: inbox %s: %v", id, targets[i], err)
		}
		ps, err := vals[0].ToString()
		if err != nil {
			continue // never stored there, or its index entry was pruned: gone
		}
		p, err := wire.ParsePos(ps)
		if err != nil {
			continue
		}
		rs, _ := vals[1].ToString()
		rp, _ := wire.ParsePos(rs)
		states[i] = state{pos: p, read: rp, ok: true}
		reads = append(reads, c.B().Xrange().Key(inboxKey(targets[i], "ib")).Start(ps).End(ps).Build())
		readIdx = append(readIdx, i)
	}
	nowMS := e.cfg.Now().UnixMilli()
	kept := make([]bool, len(targets))
	if len(reads) > 0 {
		for j, r := range c.DoMulti(ctx, reads...) {
			entries, err := r.AsXRange()
			if err != nil {
				return engine.NoteReport{}, fmt.Errorf("note report %s: %w", id, err)
			}
			if len(entries) == 1 {
				exp, _ := strconv.ParseInt(entries[0].FieldValues["e"], 10, 64)
				kept[readIdx[j]] = exp > nowMS
			}
		}
	}
	for i := range targets {
		switch {
		case !states[i].ok || !kept[i]:
			rep.Gone++
		case !states[i].read.Less(states[i].pos):
			rep.Read++
		default:
			rep.Pending++
		}
	}
	return rep, nil
}

// scriptOut is one inbox script's reply.
type scriptOut struct {
	vals []rueidis.RedisMessage
	err  error
}
