package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

// noteRig is a proxy on the memory engine and one raw device connection whose
// writer the test can hold (conn.queued), so several notes wait at once.
type noteRig struct {
	t   *testing.T
	s   *Server
	eng *memengine.Engine
	ws  *websocket.Conn
	c   *conn
}

func newNoteRig(t *testing.T, cfg Config, device string) *noteRig {
	t.Helper()
	eng := memengine.New(memengine.Config{})
	for _, ev := range []string{"ev-a", "ev-b"} {
		if _, err := eng.PutStageMap(context.Background(), ev, []byte(`{"stages":{"x":{"default":{}}}}`), 1); err != nil {
			t.Fatal(err)
		}
	}
	cfg.TrustDeviceIDs = true
	s, err := New(cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); hs.Close() })
	waitfor.True(t, 5*time.Second, "note subscriptions", s.notes.ready)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/v1/ws?device="+device, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	r := &noteRig{t: t, s: s, eng: eng, ws: ws}
	waitfor.True(t, 5*time.Second, "connection", func() bool { return s.Connections() == 1 })
	r.c = s.snapshotConns()[0]
	return r
}

func (r *noteRig) send(frame string) {
	r.t.Helper()
	if err := r.ws.Write(context.Background(), websocket.MessageText, []byte(frame)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *noteRig) read() wire.ProxyFrame {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := r.ws.Read(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	f, err := wire.ParseProxyFrame(b)
	if err != nil {
		r.t.Fatal(err)
	}
	return f
}

func (r *noteRig) notify(typ string, p wire.Priority, device string) {
	r.t.Helper()
	_, err := r.eng.Notify(context.Background(), engine.NoteWrite{ID: "n-" + typ, TS: 1, Note: wire.Notification{
		Devices: []string{device}, Type: typ, Priority: p, Payload: json.RawMessage("null"), TTL: time.Hour}})
	if err != nil {
		r.t.Fatal(err)
	}
}

// hold keeps the writer off c: offers queue up without a flush.
func (r *noteRig) hold() {
	r.c.mu.Lock()
	r.c.queued = true
	r.c.mu.Unlock()
}

// release hands c to the writers with everything that queued meanwhile.
func (r *noteRig) release() { r.s.writers.push(r.c, false) }

// When notes of several priorities and critical and normal stage changes wait
// for one device, they go out as: critical stage, critical note, other stages,
// then high, normal, low notes; and the resume cursor never passes a note not
// yet written (the low note, overtaken by three others, holds it back).
func TestNotePriorityOrder(t *testing.T) {
	r := newNoteRig(t, Config{}, "d1")
	r.send(`{"op":"sub","events":{"ev-a":0,"ev-b":0}}`)
	r.send(`{"op":"inbox","after":""}`)
	waitfor.True(t, 5*time.Second, "subscriptions and resume", func() bool {
		return testutil.ToFloat64(r.s.metrics.subscriptions) == 2 && testutil.ToFloat64(r.s.metrics.resumes.WithLabelValues("ok")) == 1 &&
			r.s.notes.resumesInFlight() == 0
	})
	r.hold()
	r.notify("low", wire.PriorityLow, "d1")
	r.notify("normal", wire.PriorityNormal, "d1")
	r.notify("critical", wire.PriorityCritical, "d1")
	r.notify("high", wire.PriorityHigh, "d1")
	if _, err := r.eng.SetStage(context.Background(), engine.SetRequest{Event: "ev-a", Key: "plain", TS: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.eng.SetStage(context.Background(), engine.SetRequest{Event: "ev-b", Key: "knockout", TS: 1, Critical: true}); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 5*time.Second, "both stages pending", func() bool {
		r.c.mu.Lock()
		defer r.c.mu.Unlock()
		return len(r.c.subs) == 2 && r.c.subs[0].pending != nil && r.c.subs[1].pending != nil
	})
	r.release()
	var got []string
	var notes []wire.ProxyFrame
	for range 6 {
		f := r.read()
		switch f.Op {
		case wire.OpStage:
			got = append(got, "stage:"+f.Key)
		case wire.OpNote:
			got = append(got, "note:"+f.Type)
			notes = append(notes, f)
		}
	}
	want := "stage:knockout note:critical stage:plain note:high note:normal note:low"
	if strings.Join(got, " ") != want {
		t.Fatalf("order %v\nwant  %s", got, want)
	}
	// Positions: low < normal < critical < high. Until low is written every
	// frame resumes from before it; after it, from the newest.
	for i, f := range notes[:3] {
		if f.Resume != "d0-0" {
			t.Fatalf("note %d (%s) resume %q, want d0-0 (the low note is not written yet)", i, f.Type, f.Resume)
		}
	}
	if notes[3].Resume != notes[1].ID { // high has the highest position
		t.Fatalf("after the last note resume = %q, want %q (the newest)", notes[3].Resume, notes[1].ID)
	}
}

// Under overload (here: more than ShedNoteBytes of notes waiting) low pushes are
// shed; the resume cursor stays before the shed note, and resuming from it
// delivers it (a backlog is never shed).
func TestNoteShedLow(t *testing.T) {
	r := newNoteRig(t, Config{ShedNoteBytes: 1}, "d2")
	r.send(`{"op":"inbox","after":""}`)
	waitfor.True(t, 5*time.Second, "resume", func() bool {
		return testutil.ToFloat64(r.s.metrics.resumes.WithLabelValues("ok")) == 1 && r.s.notes.resumesInFlight() == 0
	})
	r.hold()
	for i := range 3 { // queued: more than 1 byte of notes waits, the low one is shed
		r.notify(fmt.Sprintf("n%d", i), wire.PriorityNormal, "d2")
	}
	r.notify("shed", wire.PriorityLow, "d2")
	r.notify("hi", wire.PriorityHigh, "d2")
	if shed := testutil.ToFloat64(r.s.metrics.notesShed); shed != 1 {
		t.Fatalf("%v notes shed, want 1", shed)
	}
	r.release()
	var last wire.ProxyFrame
	for range 4 {
		last = r.read()
		if last.Type == "shed" {
			t.Fatal("the shed note was written")
		}
	}
	if last.Resume != "d0-0" && !strings.HasPrefix(last.Resume, "d") {
		t.Fatalf("resume %q", last.Resume)
	}
	// The cursor stays before the shed note.
	held, _ := wire.ParseAfter(last.Resume)
	shedAt := mustRead(t, r.eng, "d2")[3].Pos
	if !held.Device.Less(shedAt) {
		t.Fatalf("resume cursor %v passed the shed note at %v", held.Device, shedAt)
	}
	r.send(`{"op":"inbox","after":"` + last.Resume + `"}`)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case <-deadline:
			t.Fatal("the shed note never came on resume")
		default:
		}
		if f := r.read(); f.Type == "shed" {
			return
		}
	}
}

func mustRead(t *testing.T, eng *memengine.Engine, device string) []engine.StoredNote {
	t.Helper()
	got, err := eng.ReadInbox(context.Background(), engine.Inbox{Kind: wire.InboxDevice, ID: device}, wire.Pos{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestNoteAcksCountOnce (hardening #5): acking a note twice counts one ack; a
// cursor past every note the connection was sent marks nothing read and is
// answered bad_request.
func TestNoteAcksCountOnce(t *testing.T) {
	r := newNoteRig(t, Config{ReportInterval: time.Hour}, "ack-dev") // counts stay in the proxy
	r.send(`{"op":"inbox","after":""}`)                              // registered, then the backlog: the note arrives either way
	r.notify("one", wire.PriorityNormal, "ack-dev")
	f := r.read()
	if f.Op != wire.OpNote {
		t.Fatalf("frame %+v", f)
	}
	for range 3 {
		r.send(`{"op":"ack","note":"` + f.ID + `"}`)
	}
	future := wire.Cursor{Kind: wire.InboxDevice, Pos: wire.Pos{MS: 1 << 50}}.String()
	r.send(`{"op":"ack","note":"` + future + `"}`)
	e := r.read()
	for e.Op == wire.OpNote && e.ID == f.ID { // pushed and in the backlog: a duplicate, same cursor
		e = r.read()
	}
	if e.Op != wire.OpError || e.Code != wire.CodeBadRequest || !strings.Contains(e.Msg, "never sent") {
		t.Fatalf("future ack answered %+v", e)
	}
	r.s.notes.cmu.Lock()
	acked, read := r.s.notes.counts["n-one"].Acked, r.s.notes.reads[engine.Inbox{Kind: wire.InboxDevice, ID: "ack-dev"}]
	r.s.notes.cmu.Unlock()
	if acked != 1 {
		t.Fatalf("three acks of one note counted %d", acked)
	}
	if read.String() != strings.TrimPrefix(f.ID, "d") {
		t.Fatalf("read mark %v, want the acked note %s (not the future cursor)", read, f.ID)
	}
}
