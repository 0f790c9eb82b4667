package broadcaster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
)

func post(t *testing.T, url, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/notifications", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every bad request is refused with a 4xx naming the limit, and stores nothing.
func TestNotifyValidation(t *testing.T) {
	_, eng, url := start(t)
	many := make([]string, wire.MaxNoteTargets+1)
	for i := range many {
		many[i] = fmt.Sprintf("m%d", i)
	}
	manyJSON, _ := json.Marshal(many)
	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"to":{"members":["m1"]},"type":"t","priority":"urgent"}`, 400, "not one of critical, high, normal, low"},
		{`{"to":{},"type":"t"}`, 400, "names no member and no device"},
		{`{"to":{"members":[]},"devices":[],"type":"t"}`, 400, "unknown field"},
		{`{"to":{"members":["m1"]},"type":"Bad Type"}`, 400, "type id"},
		{`{"to":{"members":["m 1"]},"type":"t"}`, 400, "printable ASCII"},
		{`{"to":{"members":` + string(manyJSON) + `},"type":"t"}`, 400, "at most 1000"},
		{`{"to":{"members":["m1"]},"type":"t","payload":{"x":"` + strings.Repeat("a", wire.MaxNotePayload) + `"}}`, 413, "at most 4096"},
		{`{"to":{"members":["m1"]},"type":"t","payload":"` + strings.Repeat("a", wire.MaxNoteBody) + `"}`, 413, "larger than"},
		{`{"to":{"members":["m1"]},"type":"t","ttl_seconds":99999999}`, 400, "at most 2592000"},
		{`{"to":{"members":["m1"]},"type":"t","dedup_key":"` + strings.Repeat("k", 300) + `"}`, 400, "at most 256"},
		{`not json`, 400, "body"},
	} {
		status, body := post(t, url, tc.body, nil)
		if status != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("%.80s...: %d %s, want %d containing %q", tc.body, status, body, tc.status, tc.want)
		}
	}
	if got, _ := eng.ReadInbox(context.Background(), engine.Inbox{Kind: wire.InboxMember, ID: "m1"}, wire.Pos{}, 10); len(got) != 0 {
		t.Fatalf("a refused request stored %d notes", len(got))
	}
	// A producer limited to some events may not notify.
	s, err := broadcaster.New(broadcaster.Config{Producers: []broadcaster.Producer{{Name: "ev-only", Token: "0ld-7c6b5a4f3e2d1c0b9a8f7e6d", Events: []string{"fight-*"}}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := &producer.Client{BaseURL: httptest.NewServer(s.Handler()).URL, Token: "0ld-7c6b5a4f3e2d1c0b9a8f7e6d"}
	_, err = c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "t"}, "")
	apiErr(t, err, 403, "forbidden")
}

// 202 with counts; the same Idempotency-Key again returns the same id and
// stores nothing twice; another body under it is a conflict; the report counts.
func TestNotifyAcceptedAndIdempotent(t *testing.T) {
	c, eng, _ := start(t)
	ctx := context.Background()
	req := producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1", "m1", "m2"}, Devices: []string{"d7"}},
		Type: "profile-updated", Priority: "high", Payload: json.RawMessage(`{"name": "Ana"}`), DedupKey: "profile:m1"}
	r, err := c.Notify(ctx, req, "key-1")
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == "" || r.Members != 2 || r.Devices != 1 || r.Stored != 3 || r.Priority != "high" || r.Replayed {
		t.Fatalf("reply %+v", r)
	}
	again, err := c.Notify(ctx, req, "key-1")
	if err != nil || again.ID != r.ID || !again.Replayed {
		t.Fatalf("retry: %+v, %v", again, err)
	}
	got, _ := eng.ReadInbox(ctx, engine.Inbox{Kind: wire.InboxMember, ID: "m1"}, wire.Pos{}, 10)
	if len(got) != 1 || !strings.Contains(string(got[0].Body), `"payload":{"name":"Ana"}`) || !strings.Contains(string(got[0].Body), `"priority":"high"`) {
		t.Fatalf("m1 inbox: %d notes %v", len(got), got)
	}
	req.Type = "other"
	_, err = c.Notify(ctx, req, "key-1")
	apiErr(t, err, 409, "idempotency_conflict")
	rep, err := c.NoteReport(ctx, r.ID)
	if err != nil || rep.Pending != 3 || rep.Members != 2 || rep.Devices != 1 {
		t.Fatalf("report %+v, %v", rep, err)
	}
	_, err = c.NoteReport(ctx, "n000")
	apiErr(t, err, 404, "not_found")
}

// gate holds Notify calls of one priority until released.
type gate struct {
	*memengine.Engine
	prio    wire.Priority
	release chan struct{}
	entered chan struct{}
}

func (g *gate) NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome {
	if ws[0].Note.Priority == g.prio { // a lane's group shares a priority
		g.entered <- struct{}{}
		select {
		case <-g.release:
		case <-ctx.Done():
			out := make([]engine.NoteOutcome, len(ws))
			for i := range out {
				out[i].Err = ctx.Err()
			}
			return out
		}
	}
	return g.Engine.NotifyMany(ctx, ws)
}

// A flood of low notes fills the low lane (then 503, nothing stored) while a
// critical one goes through its own lane at once.
func TestNotifyLanes(t *testing.T) {
	g := &gate{Engine: memengine.New(memengine.Config{}), prio: wire.PriorityLow,
		release: make(chan struct{}), entered: make(chan struct{}, 16)}
	var lanes [wire.NumPriorities]broadcaster.LaneConfig
	lanes[wire.PriorityLow] = broadcaster.LaneConfig{Queue: 2, Workers: 1}
	s, err := broadcaster.New(broadcaster.Config{Token: token, Lanes: lanes, StageBudget: 5 * time.Second, EngineTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	low := `{"to":{"members":["m1"]},"type":"t","priority":"low"}`
	results := make(chan int, 3)
	go func() { st, _ := post(t, ts.URL, low, nil); results <- st }()
	<-g.entered // one low in the worker, blocked in the engine
	for range 2 {
		go func() { st, _ := post(t, ts.URL, low, nil); results <- st }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for queued(t, s) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the low lane never filled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st, body := post(t, ts.URL, low, nil); st != 503 || !strings.Contains(body, "overloaded") || !strings.Contains(body, "low lane is full") {
		t.Fatalf("a low note past the full lane: %d %s, want 503 overloaded", st, body)
	}
	start := time.Now()
	st, body := post(t, ts.URL, `{"to":{"members":["m1"]},"type":"t","priority":"critical"}`, nil)
	if st != 202 {
		t.Fatalf("critical during a low flood: %d %s", st, body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("critical waited %v behind the low lane", took)
	}
	close(g.release)
	for range 3 {
		if st := <-results; st != 202 {
			t.Fatalf("a queued low note got %d", st)
		}
	}
}

// queued reads the low lane's queue gauge.
func queued(t *testing.T, s *broadcaster.Server) float64 {
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "stagecast_broadcaster_notification_queue" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "priority" && l.GetValue() == "low" {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestNotifyKeysPerProducer (hardening #5): an Idempotency-Key is the
// producer's own: another producer's same key is not a conflict and never
// shows the other's note id; a producer limited to events reads no note report.
func TestNotifyKeysPerProducer(t *testing.T) {
	const tokA, tokB, tokEv = "pa-7c6b5a4f3e2d1c0b9a8f7e6d", "pb-1a2b3c4d5e6f7a8b9c0d1e2f", "pe-9f8e7d6c5b4a39281706f5e4"
	_, url := serve(t, broadcaster.Config{Producers: []broadcaster.Producer{{Name: "a", Token: tokA}, {Name: "b", Token: tokB},
		{Name: "ev-only", Token: tokEv, Events: []string{"fight-*"}}}}, memengine.New(memengine.Config{}))
	ctx := context.Background()
	a := &producer.Client{BaseURL: url, Token: tokA}
	b := &producer.Client{BaseURL: url, Token: tokB}
	ra, err := a.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "from-a"}, "shared-key")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "from-b"}, "shared-key")
	if err != nil {
		t.Fatalf("b's first use of its key: %v (a's note %s)", err, ra.ID)
	}
	if rb.ID == ra.ID || rb.Replayed {
		t.Fatalf("b got a's note: %+v", rb)
	}
	if again, err := b.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "from-b"}, "shared-key"); err != nil || again.ID != rb.ID || !again.Replayed {
		t.Fatalf("b's retry: %+v %v", again, err)
	}
	ev := &producer.Client{BaseURL: url, Token: tokEv}
	_, err = ev.NoteReport(ctx, ra.ID)
	apiErr(t, err, 403, "forbidden")
}

// failingNotes fails each write of type "flaky" its first fails times, and the
// writes of type "down" always; it counts the writes it is handed, by id, and
// the largest group.
type failingNotes struct {
	*memengine.Engine
	fails    int
	mu       sync.Mutex
	calls    map[string]int
	maxGroup int
}

func (f *failingNotes) NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome {
	f.mu.Lock()
	f.maxGroup = max(f.maxGroup, len(ws))
	out := make([]engine.NoteOutcome, len(ws))
	var ok []int
	for i, w := range ws {
		f.calls[w.ID]++
		switch {
		case w.Note.Type == "down" || (w.Note.Type == "flaky" && f.calls[w.ID] <= f.fails):
			out[i].Err = errors.New("shard unreachable")
		default:
			ok = append(ok, i)
		}
	}
	f.mu.Unlock()
	for _, i := range ok {
		out[i].Res, out[i].Err = f.Engine.Notify(ctx, ws[i])
	}
	return out
}

func startFailingNotes(t *testing.T, fails int, cfg broadcaster.Config) (*failingNotes, *producer.Client) {
	f := &failingNotes{Engine: memengine.New(memengine.Config{}), fails: fails, calls: map[string]int{}}
	cfg.Token = token
	_, url := serve(t, cfg, f)
	return f, &producer.Client{BaseURL: url, Token: token}
}

// A lane hands the engine its queued notes as one group; a note the engine
// fails is retried on its own (under its id), and the notes it stored are
// never sent again.
func TestNotifyGroupRetriesOnlyTheFailed(t *testing.T) {
	var lanes [wire.NumPriorities]broadcaster.LaneConfig
	lanes[wire.PriorityNormal] = broadcaster.LaneConfig{Queue: 1000, Workers: 1}
	f, c := startFailingNotes(t, 2, broadcaster.Config{Lanes: lanes, StageBudget: 5 * time.Second, EngineTimeout: time.Second, BreakerFailures: 100})
	notes := make([]producer.BatchNote, 200)
	for i := range notes {
		typ := "t"
		if i == 7 {
			typ = "flaky"
		}
		notes[i].Notification = producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{fmt.Sprintf("m%d", i)}}, Type: typ}
	}
	res, err := c.NotifyBatch(context.Background(), notes)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != 202 || r.Reply == nil || r.Reply.Stored != 1 {
			t.Fatalf("note %d: %+v", i, r)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.maxGroup < 2 {
		t.Fatalf("the largest group held %d notes: 200 queued notes never went to the engine together", f.maxGroup)
	}
	for id, n := range f.calls {
		if id == res[7].Reply.ID {
			if n != 3 {
				t.Fatalf("the failingNotes note was tried %d times, want 3 (two failures, then stored)", n)
			}
		} else if n != 1 {
			t.Fatalf("note %s was sent to the engine %d times, want once", id, n)
		}
	}
	if len(f.calls) != 200 {
		t.Fatalf("%d notes reached the engine, want 200", len(f.calls))
	}
}

// Notes the engine keeps failing are answered 503 at the budget, each on its
// own; once the notes breaker is open, a note is refused without reaching the
// engine, never answered as stored.
func TestNotifyGroupFailsWhole(t *testing.T) {
	f, c := startFailingNotes(t, 0, broadcaster.Config{StageBudget: 300 * time.Millisecond, EngineTimeout: 100 * time.Millisecond,
		BreakerFailures: 1, BreakerOpenFor: time.Minute})
	down := producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "down"}
	_, err := c.Notify(context.Background(), down, "")
	apiErr(t, err, 503, "outcome_unknown")
	f.mu.Lock()
	tried := len(f.calls)
	f.mu.Unlock()
	res, err := c.NotifyBatch(context.Background(), []producer.BatchNote{{Notification: down},
		{Notification: producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m2"}}, Type: "t"}}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != 503 || r.Error == nil || r.Reply != nil {
			t.Fatalf("note %d with the breaker open: %+v, want 503", i, r)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) != tried {
		t.Fatalf("the engine was handed %d notes with the breaker open", len(f.calls)-tried)
	}
}

// notification_engine_seconds counts each engine attempt of a lane's group
// (a note retried twice is three attempts), beside notification_seconds,
// which counts the note once: the two split a note's time between the lane
// and the engine.
func TestNotifyEngineAttemptsHaveTheirOwnHistogram(t *testing.T) {
	_, c := startFailingNotes(t, 2, broadcaster.Config{StageBudget: 5 * time.Second, EngineTimeout: time.Second, BreakerFailures: 100})
	if _, err := c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "flaky"}, ""); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, c.BaseURL)
	for _, want := range []string{
		`stagecast_broadcaster_notification_engine_seconds_count{priority="normal"} 3`,
		`stagecast_broadcaster_notification_seconds_count{priority="normal"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
