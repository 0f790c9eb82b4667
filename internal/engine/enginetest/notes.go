package enginetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// NoteEngine is the notification surface the suite checks.
type NoteEngine interface {
	Notify(ctx context.Context, w engine.NoteWrite) (engine.NoteResult, error)
	NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome
	Register(ctx context.Context, proxy string, add, remove []engine.Inbox) error
	SubscribeNotes(ctx context.Context, proxy string, onPush func(engine.NotePush), onSubscribed func(shard int)) error
	ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error)
	MarkRead(ctx context.Context, marks map[engine.Inbox]wire.Pos) error
	PutNoteDelivery(ctx context.Context, counts map[string]engine.NoteCount) error
	NoteReport(ctx context.Context, id string) (engine.NoteReport, error)
	InboxStats(ctx context.Context, ib engine.Inbox) (engine.InboxStats, error)
}

// RunNotes runs the notification part of the suite. newEngine returns a fresh,
// empty engine (its inboxes keep engine.DefaultInboxLen notes).
func RunNotes(t *testing.T, newEngine func(t *testing.T) NoteEngine) {
	t.Run("InboxOrder", func(t *testing.T) { testInboxOrder(t, newEngine(t)) })
	t.Run("Dedup", func(t *testing.T) { testNoteDedup(t, newEngine(t)) })
	t.Run("RetentionCount", func(t *testing.T) { testRetentionCount(t, newEngine(t)) })
	t.Run("RetentionAge", func(t *testing.T) { testRetentionAge(t, newEngine(t)) })
	t.Run("PushToRegistered", func(t *testing.T) { testPushRegistered(t, newEngine(t)) })
	t.Run("RegistryLosesNothing", func(t *testing.T) { testRegistryLosesNothing(t, newEngine(t)) })
	t.Run("Idempotency", func(t *testing.T) { testNoteIdempotency(t, newEngine(t)) })
	t.Run("Many", func(t *testing.T) { testNotifyMany(t, newEngine(t)) })
	t.Run("Report", func(t *testing.T) { testNoteReport(t, newEngine(t)) })
	t.Run("IndexBounded", func(t *testing.T) { testIndexBounded(t, newEngine(t)) })
	t.Run("ReplayOfReplaced", func(t *testing.T) { testReplayOfReplaced(t, newEngine(t)) })
	t.Run("PushCarriesPrev", func(t *testing.T) { testPushCarriesPrev(t, newEngine(t)) })
}

// testIndexBounded (hardening #1): one old note plus many with one dedup_key,
// then a mix with other keys past the count bound: the index never holds more
// than 2 fields per kept note plus 2.
func testIndexBounded(t *testing.T, e NoteEngine) {
	ib := engine.Inbox{Kind: wire.InboxMember, ID: "dd"}
	check := func(when string) {
		t.Helper()
		st, err := e.InboxStats(ctx(t), ib)
		if err != nil {
			t.Fatal(err)
		}
		if st.IndexFields > 2*st.Notes+2 || st.Notes > engine.DefaultInboxLen {
			t.Fatalf("%s: %d notes, %d index fields (bound: %d notes, 2 per note + 2)", when, st.Notes, st.IndexFields, engine.DefaultInboxLen)
		}
	}
	notify(t, e, note([]string{"dd"}, nil, "old"))
	for i := 0; i < 600; i++ {
		notify(t, e, note([]string{"dd"}, nil, "profile", func(w *engine.NoteWrite) { w.Note.DedupKey = "profile" }))
	}
	check("after 600 with one dedup_key")
	if got := readAll(t, e, ib, wire.Pos{}); len(got) != 2 {
		t.Fatalf("inbox holds %d notes, want 2 (the old one and the last replacement)", len(got))
	}
	for i := 0; i < 3*engine.DefaultInboxLen; i++ {
		notify(t, e, note([]string{"dd"}, nil, "mix", func(w *engine.NoteWrite) {
			if i%3 == 0 {
				w.Note.DedupKey = fmt.Sprintf("k%d", i%7)
			}
			if i%5 == 0 {
				w.Note.TTL = time.Millisecond
			}
		}))
	}
	check("after a mix past the count bound")
}

// testReplayOfReplaced: a retry (same note id) of a note that a dedup_key
// replaced stores nothing: the replacement stays the only copy.
func testReplayOfReplaced(t *testing.T, e NoteEngine) {
	d := func(w *engine.NoteWrite) { w.Note.DedupKey = "score" }
	a := note([]string{"rr"}, nil, "t", d)
	a.IdempotencyKey, a.BodyHash = "replay-a", "ha"
	notify(t, e, a)
	notify(t, e, note([]string{"rr"}, nil, "t", d))
	retry := a
	retry.ID = "n-new-request"
	if r := notify(t, e, retry); !r.Replayed || r.Stored != 0 {
		t.Fatalf("retry of a replaced note: %+v, want a replay that stores nothing", r)
	}
	got := readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "rr"}, wire.Pos{})
	if len(got) != 1 || bodyHas(got[0], a.ID) {
		t.Fatalf("after the retry the inbox holds %d notes (%v): the replaced note came back", len(got), got)
	}
}

// testPushCarriesPrev (hardening #2): each push names the inbox entry before
// it, so a proxy can tell it missed one.
func testPushCarriesPrev(t *testing.T, e NoteEngine) {
	pushes := subscribe(t, e, "pp")
	ib := engine.Inbox{Kind: wire.InboxMember, ID: "gap"}
	a := notify(t, e, note([]string{"gap"}, nil, "a")) // not registered: not pushed
	if a.Pushes != 0 {
		t.Fatalf("pushed %d before any registration", a.Pushes)
	}
	if err := e.Register(ctx(t), "pp", []engine.Inbox{ib}, nil); err != nil {
		t.Fatal(err)
	}
	notify(t, e, note([]string{"gap"}, nil, "b"))
	stored := readAll(t, e, ib, wire.Pos{})
	if len(stored) != 2 {
		t.Fatalf("inbox holds %d notes", len(stored))
	}
	select {
	case p := <-pushes:
		if p.Pos != stored[1].Pos || p.Prev != stored[0].Pos {
			t.Fatalf("push at %v prev %v, want at %v prev %v", p.Pos, p.Prev, stored[1].Pos, stored[0].Pos)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no push")
	}
}

var noteSeq struct {
	sync.Mutex
	n int
}

func note(members, devices []string, typ string, opts ...func(*engine.NoteWrite)) engine.NoteWrite {
	noteSeq.Lock()
	noteSeq.n++
	id := fmt.Sprintf("n%06d", noteSeq.n)
	noteSeq.Unlock()
	w := engine.NoteWrite{ID: id, TS: time.Now().UnixMilli(), Note: wire.Notification{
		Members: members, Devices: devices, Type: typ, Priority: wire.PriorityNormal,
		Payload: []byte(`{"i":"` + id + `"}`), TTL: time.Hour}}
	for _, o := range opts {
		o(&w)
	}
	return w
}

func notify(t *testing.T, e NoteEngine, w engine.NoteWrite) engine.NoteResult {
	t.Helper()
	r, err := e.Notify(ctx(t), w)
	if err != nil {
		t.Fatalf("Notify(%s): %v", w.ID, err)
	}
	return r
}

func readAll(t *testing.T, e NoteEngine, ib engine.Inbox, after wire.Pos) []engine.StoredNote {
	t.Helper()
	var out []engine.StoredNote
	for range 100 {
		page, err := e.ReadInbox(ctx(t), ib, after, 7)
		if err != nil {
			t.Fatalf("ReadInbox(%s): %v", ib, err)
		}
		out = append(out, page...)
		if len(page) < 7 {
			return out
		}
		after = page[len(page)-1].Pos
	}
	t.Fatal("ReadInbox never ended")
	return nil
}

func bodyHas(n engine.StoredNote, s string) bool { return strings.Contains(string(n.Body), s) }

func testInboxOrder(t *testing.T, e NoteEngine) {
	m := engine.Inbox{Kind: wire.InboxMember, ID: "m1"}
	var ids []string
	for i := 0; i < 3; i++ {
		w := note([]string{"m1"}, nil, "t")
		ids = append(ids, w.ID)
		if r := notify(t, e, w); r.Stored != 1 || r.ID != w.ID {
			t.Fatalf("result %+v", r)
		}
	}
	got := readAll(t, e, m, wire.Pos{})
	if len(got) != 3 {
		t.Fatalf("inbox holds %d notes, want 3", len(got))
	}
	for i, n := range got {
		if !bodyHas(n, `"nid":"`+ids[i]+`"`) || (i > 0 && !got[i-1].Pos.Less(n.Pos)) {
			t.Fatalf("note %d: %s at %v (previous %v)", i, n.Body, n.Pos, got[max(i-1, 0)].Pos)
		}
	}
	if rest := readAll(t, e, m, got[1].Pos); len(rest) != 1 || rest[0].Pos != got[2].Pos {
		t.Fatalf("after the second: %d notes", len(rest))
	}
	// A device inbox is another inbox, even with the same id.
	if d := readAll(t, e, engine.Inbox{Kind: wire.InboxDevice, ID: "m1"}, wire.Pos{}); len(d) != 0 {
		t.Fatalf("device inbox m1 holds %d notes", len(d))
	}
}

func testNoteDedup(t *testing.T, e NoteEngine) {
	dedup := func(w *engine.NoteWrite) { w.Note.DedupKey = "profile:m1" }
	first := note([]string{"m1"}, nil, "profile-updated", dedup)
	notify(t, e, first)
	notify(t, e, note([]string{"m1"}, nil, "other"))
	second := note([]string{"m1"}, nil, "profile-updated", dedup)
	notify(t, e, second)
	got := readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "m1"}, wire.Pos{})
	if len(got) != 2 || !bodyHas(got[0], `"type":"other"`) || !bodyHas(got[1], second.ID) {
		t.Fatalf("after a replacing note the inbox holds %d notes: %v", len(got), got)
	}
}

func testRetentionCount(t *testing.T, e NoteEngine) {
	n := engine.DefaultInboxLen + 5
	var last string
	for i := 0; i < n; i++ {
		w := note([]string{"busy"}, nil, "t")
		notify(t, e, w)
		last = w.ID
	}
	got := readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "busy"}, wire.Pos{})
	if len(got) != engine.DefaultInboxLen || !bodyHas(got[len(got)-1], last) {
		t.Fatalf("after %d notes the inbox holds %d, want the newest %d", n, len(got), engine.DefaultInboxLen)
	}
}

func testRetentionAge(t *testing.T, e NoteEngine) {
	short := note(nil, []string{"d1"}, "t", func(w *engine.NoteWrite) { w.Note.TTL = 300 * time.Millisecond })
	notify(t, e, short)
	keep := note(nil, []string{"d1"}, "t")
	notify(t, e, keep)
	ib := engine.Inbox{Kind: wire.InboxDevice, ID: "d1"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := readAll(t, e, ib, wire.Pos{})
		if len(got) == 1 && bodyHas(got[0], keep.ID) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the expired note is still read: %d notes", len(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscribe starts SubscribeNotes for proxy and waits until every shard is subscribed.
func subscribe(t *testing.T, e NoteEngine, proxy string) <-chan engine.NotePush {
	t.Helper()
	pushes := make(chan engine.NotePush, 4096)
	sctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var mu sync.Mutex
	shards := map[int]bool{}
	all := make(chan struct{})
	go func() {
		_ = e.SubscribeNotes(sctx, proxy, func(p engine.NotePush) {
			select {
			case pushes <- p:
			default:
				t.Error("push channel full")
			}
		}, func(k int) {
			mu.Lock()
			defer mu.Unlock()
			if !shards[k] {
				shards[k] = true
				if len(shards) == engine.NoteShards {
					close(all)
				}
			}
		})
	}()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatal("note subscriptions did not land")
	}
	return pushes
}

func testPushRegistered(t *testing.T, e NoteEngine) {
	p1, p2 := subscribe(t, e, "p1"), subscribe(t, e, "p2")
	m := engine.Inbox{Kind: wire.InboxMember, ID: "m1"}
	if err := e.Register(ctx(t), "p1", []engine.Inbox{m}, nil); err != nil {
		t.Fatal(err)
	}
	w := note([]string{"m1", "m2"}, nil, "t", func(w *engine.NoteWrite) { w.Note.Priority = wire.PriorityHigh })
	r := notify(t, e, w)
	if r.Stored != 2 || r.Pushes != 1 {
		t.Fatalf("result %+v, want 2 stored, 1 push (only m1 is registered, on p1)", r)
	}
	select {
	case p := <-p1:
		stored := readAll(t, e, m, wire.Pos{})
		if p.Inbox != m || p.Priority != wire.PriorityHigh || len(stored) != 1 || p.Pos != stored[0].Pos || string(p.Body) != string(stored[0].Body) {
			t.Fatalf("push %+v does not match the stored note %+v", p, stored)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the registered proxy got no push")
	}
	if err := e.Register(ctx(t), "p1", nil, []engine.Inbox{m}); err != nil {
		t.Fatal(err)
	}
	if r := notify(t, e, note([]string{"m1"}, nil, "t")); r.Pushes != 0 {
		t.Fatalf("pushed to %d proxies after the registration was removed", r.Pushes)
	}
	// A marker through p1's own registration proves p1 and p2 have seen
	// everything sent before it (pushes of one shard arrive in order).
	if err := e.Register(ctx(t), "p2", []engine.Inbox{m}, nil); err != nil {
		t.Fatal(err)
	}
	marker := note([]string{"m1"}, nil, "marker")
	notify(t, e, marker)
	select {
	case p := <-p2:
		if !strings.Contains(string(p.Body), marker.ID) {
			t.Fatalf("p2 got %s before the marker: it was never registered for it", p.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("p2 got no push after registering")
	}
	select {
	case p := <-p1:
		t.Fatalf("p1 got %s after its registration was removed", p.Body)
	default:
	}
}

// testRegistryLosesNothing: notes flow while a proxy registers and reads the
// backlog; every note after the backlog's start is in the backlog or pushed.
func testRegistryLosesNothing(t *testing.T, e NoteEngine) {
	pushes := subscribe(t, e, "px")
	ib := engine.Inbox{Kind: wire.InboxMember, ID: "flow"}
	const n = 150
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			if _, err := e.Notify(context.Background(), note([]string{"flow"}, nil, "t")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for { // register mid-flow
		if got, _ := e.ReadInbox(ctx(t), ib, wire.Pos{}, n); len(got) >= 20 {
			break
		}
	}
	if err := e.Register(ctx(t), "px", []engine.Inbox{ib}, nil); err != nil {
		t.Fatal(err)
	}
	backlog := readAll(t, e, ib, wire.Pos{})
	wg.Wait()
	all := readAll(t, e, ib, wire.Pos{})
	if len(all) != n {
		t.Fatalf("inbox holds %d notes, want %d", len(all), n)
	}
	have := map[wire.Pos]bool{}
	for _, sn := range backlog {
		have[sn.Pos] = true
	}
	deadline := time.After(5 * time.Second)
	for missing := n - len(have); missing > 0; {
		select {
		case p := <-pushes:
			if !have[p.Pos] {
				have[p.Pos] = true
				missing--
			}
		case <-deadline:
			t.Fatalf("%d notes neither in the backlog (%d) nor pushed", missing, len(backlog))
		}
	}
	for _, sn := range all {
		if !have[sn.Pos] {
			t.Fatalf("note at %v lost", sn.Pos)
		}
	}
}

func testNoteIdempotency(t *testing.T, e NoteEngine) {
	w := note([]string{"m9"}, nil, "t")
	w.IdempotencyKey, w.BodyHash = "idem-1", "hash-a"
	first := notify(t, e, w)
	retry := note([]string{"m9"}, nil, "t") // a new id, as a new request gets
	retry.IdempotencyKey, retry.BodyHash = "idem-1", "hash-a"
	r := notify(t, e, retry)
	if !r.Replayed || r.ID != first.ID {
		t.Fatalf("retry %+v, want a replay of %s", r, first.ID)
	}
	if got := readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "m9"}, wire.Pos{}); len(got) != 1 {
		t.Fatalf("a retried notification is stored %d times", len(got))
	}
	other := note([]string{"m9"}, nil, "t")
	other.IdempotencyKey, other.BodyHash = "idem-1", "hash-b"
	if _, err := e.Notify(ctx(t), other); !errors.Is(err, engine.ErrIdempotencyConflict) {
		t.Fatalf("another body under the same key: %v, want ErrIdempotencyConflict", err)
	}
}

// testNotifyMany: a batch of writes, each with its own outcome, as if each
// were sent alone: stored, replayed, in conflict, stored in several inboxes
// and pushed to a registered proxy; a repeat of the batch stores nothing new.
func testNotifyMany(t *testing.T, e NoteEngine) {
	keyed := func(key, hash string) func(*engine.NoteWrite) {
		return func(w *engine.NoteWrite) { w.IdempotencyKey, w.BodyHash = key, hash }
	}
	held := note([]string{"mm-c"}, nil, "t", keyed("mk-held", "h1"))
	notify(t, e, held)
	if err := e.Register(ctx(t), "px-1", []engine.Inbox{{Kind: wire.InboxMember, ID: "mm-a"}}, nil); err != nil {
		t.Fatal(err)
	}
	ws := []engine.NoteWrite{
		note([]string{"mm-a", "mm-b"}, []string{"md-a"}, "t"),
		note([]string{"mm-b"}, nil, "t", keyed("mk-new", "h2")),
		note([]string{"mm-c"}, nil, "t", keyed("mk-held", "h1")),    // a retry of held
		note([]string{"mm-c"}, nil, "t", keyed("mk-held", "other")), // another body, same key
		note([]string{"mm-b"}, nil, "t", func(w *engine.NoteWrite) { w.Note.DedupKey = "score" }),
	}
	out := e.NotifyMany(ctx(t), ws)
	if len(out) != len(ws) {
		t.Fatalf("%d outcomes for %d writes", len(out), len(ws))
	}
	want := []engine.NoteResult{
		{ID: ws[0].ID, Stored: 3, Pushes: 1},
		{ID: ws[1].ID, Stored: 1},
		{ID: held.ID, Replayed: true, Stored: 1},
		{},
		{ID: ws[4].ID, Stored: 1},
	}
	for i, o := range out {
		if i == 3 {
			if !errors.Is(o.Err, engine.ErrIdempotencyConflict) || o.Res.ID != held.ID {
				t.Fatalf("write 3: %+v, %v; want a conflict naming %s", o.Res, o.Err, held.ID)
			}
			continue
		}
		if o.Err != nil || o.Res != want[i] {
			t.Fatalf("write %d: %+v, %v; want %+v", i, o.Res, o.Err, want[i])
		}
	}
	count := func() [3]int {
		return [3]int{len(readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "mm-a"}, wire.Pos{})),
			len(readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "mm-b"}, wire.Pos{})),
			len(readAll(t, e, engine.Inbox{Kind: wire.InboxMember, ID: "mm-c"}, wire.Pos{}))}
	}
	if got := count(); got != [3]int{1, 3, 1} {
		t.Fatalf("inboxes mm-a, mm-b, mm-c hold %v notes, want [1 3 1]", got)
	}
	if rep, err := e.NoteReport(ctx(t), ws[0].ID); err != nil || rep.Members != 2 || rep.Devices != 1 || rep.Pending != 3 {
		t.Fatalf("report of a batched note: %+v, %v", rep, err)
	}
	again := e.NotifyMany(ctx(t), ws[:2]) // the same ids: a lane's retry
	for i, o := range again {
		if o.Err != nil || o.Res.Stored != want[i].Stored {
			t.Fatalf("retry of write %d: %+v, %v", i, o.Res, o.Err)
		}
	}
	if got := count(); got != [3]int{1, 3, 1} {
		t.Fatalf("after the retry, inboxes hold %v notes, want [1 3 1]", got)
	}
}

func testNoteReport(t *testing.T, e NoteEngine) {
	if _, err := e.NoteReport(ctx(t), "nope"); !errors.Is(err, engine.ErrNoteNotFound) {
		t.Fatalf("report of an unknown note: %v", err)
	}
	w := note([]string{"r1", "r2"}, []string{"rd"}, "t")
	notify(t, e, w)
	r1 := engine.Inbox{Kind: wire.InboxMember, ID: "r1"}
	got := readAll(t, e, r1, wire.Pos{})
	if len(got) != 1 {
		t.Fatalf("r1 holds %d notes", len(got))
	}
	if err := e.MarkRead(ctx(t), map[engine.Inbox]wire.Pos{r1: got[0].Pos}); err != nil {
		t.Fatal(err)
	}
	if err := e.PutNoteDelivery(ctx(t), map[string]engine.NoteCount{w.ID: {Sent: 3, Acked: 1}, "unknown": {Sent: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := e.PutNoteDelivery(ctx(t), map[string]engine.NoteCount{w.ID: {Sent: 1}}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.NoteReport(ctx(t), w.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := engine.NoteReport{ID: w.ID, Type: "t", Priority: "normal", CreatedMS: w.TS, Members: 2, Devices: 1,
		Sent: 4, Acked: 1, Pending: 2, Read: 1}
	if rep != want {
		t.Fatalf("report\n got %+v\nwant %+v", rep, want)
	}
	// Replaced by a later note with the same dedup key: gone from that inbox.
	d := func(x *engine.NoteWrite) { x.Note.DedupKey = "k" }
	a := note([]string{"r3"}, nil, "t", d)
	notify(t, e, a)
	notify(t, e, note([]string{"r3"}, nil, "t", d))
	if rep, err := e.NoteReport(ctx(t), a.ID); err != nil || rep.Gone != 1 || rep.Pending != 0 {
		t.Fatalf("report of a replaced note: %+v, %v", rep, err)
	}
	if _, err := e.NoteReport(ctx(t), "unknown"); !errors.Is(err, engine.ErrNoteNotFound) {
		t.Fatalf("counts for an unknown note created its report: %v", err)
	}
}
