package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine/memengine"
)

// TestPublicOnly: the package imports no internal package and no server, so
// its API can name no internal type and any module can import it.
func TestPublicOnly(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pf, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pf.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.Contains(p, "/internal/") || strings.HasPrefix(p, "github.com/stagecast/") {
				t.Errorf("%s imports %s", f, p)
			}
		}
	}
}

const testToken = "producer-test-token-0123456789"

// startBroadcaster serves a broadcaster (in-memory engine) until the test
// ends and returns a client of it.
func startBroadcaster(t *testing.T) (*producer.Client, *httptest.Server) {
	t.Helper()
	bs, err := broadcaster.New(broadcaster.Config{Token: testToken, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	hs := httptest.NewServer(bs.Handler())
	t.Cleanup(hs.Close)
	return &producer.Client{BaseURL: hs.URL, Token: testToken}, hs
}

// TestAgainstABroadcaster: every call of the client against a real
// broadcaster (in-memory engine): the server answers in the client's types.
func TestAgainstABroadcaster(t *testing.T) {
	c, hs := startBroadcaster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	mr, err := c.PutStageMap(ctx, "ev", []byte(`{"stages":{"round-3":{"default":{"rows":["r3"]}}}}`))
	if err != nil || mr.Stages != 1 || mr.Version == 0 {
		t.Fatalf("map: %+v %v", mr, err)
	}
	if sm, err := c.GetStageMap(ctx, "ev"); err != nil || sm.Version != mr.Version || !json.Valid(sm.Map) {
		t.Fatalf("stored map: %+v %v", sm, err)
	}
	if err := c.SetLive(ctx, "ev", true); err != nil {
		t.Fatal(err)
	}
	st, err := c.SetStage(ctx, "ev", "round-3", &producer.Target{Platforms: []string{"tv"}}, "k1")
	if err != nil || st.V == 0 || st.Target == nil || st.Target.Platforms[0] != "tv" {
		t.Fatalf("stage: %+v %v", st, err)
	}
	if again, err := c.SetStage(ctx, "ev", "round-3", &producer.Target{Platforms: []string{"tv"}}, "k1"); err != nil || again.V != st.V {
		t.Fatalf("a retry with the same key: %+v %v, want v%d", again, err, st.V)
	}
	if got, err := c.Get(ctx, "ev"); err != nil || got.V != st.V || got.Stage != "round-3" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if rep, err := c.Report(ctx, "ev", st.V); err != nil || rep.V != st.V || rep.Event != "ev" {
		t.Fatalf("report: %+v %v", rep, err)
	}
	sch, err := c.Arm(ctx, "ev", producer.ScheduleRequest{Stage: "knockout", At: time.Now().Add(time.Hour).UnixMilli()}, "arm-1")
	if err != nil || sch.State != "armed" || sch.V <= st.V {
		t.Fatalf("arm: %+v %v", sch, err)
	}
	if list, err := c.Schedules(ctx, "ev"); err != nil || len(list) != 1 || list[0].ID != sch.ID {
		t.Fatalf("schedules: %+v %v", list, err)
	}
	if err := c.CancelSchedule(ctx, "ev", sch.ID, sch.V); err != nil {
		t.Fatal(err)
	}
	nr, err := c.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Priority: "high",
		Payload: json.RawMessage(`{"t":1}`)}, "")
	if err != nil || nr.ID == "" || nr.Members != 1 || nr.Priority != "high" || nr.Stored != 1 {
		t.Fatalf("notify: %+v %v", nr, err)
	}
	if rep, err := c.NoteReport(ctx, nr.ID); err != nil || rep.ID != nr.ID || rep.Type != "goal" || rep.Pending != 1 {
		t.Fatalf("note report: %+v %v", rep, err)
	}
	// an error reply is an *APIError with the status and the wire code
	_, err = c.SetStage(ctx, "ev", "not a stage key", nil, "")
	var apiErr *producer.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Code != "bad_request" {
		t.Fatalf("bad stage: %v", err)
	}
	_, err = (&producer.Client{BaseURL: hs.URL, Token: "wrong-token-0123456789abcdef"}).SetStage(ctx, "ev", "x", nil, "")
	if !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("bad token: %v", err)
	}
}

// TestNotifyBatch: a batch answers each notification on its own, in order:
// stored, replayed under its key, refused as the single endpoint would
// (a bad type, a key reused for another body), never failing the others; a
// batch over the bound is refused whole.
func TestNotifyBatch(t *testing.T) {
	c, _ := startBroadcaster(t)
	ctx := context.Background()
	note := func(member, typ string) producer.NotifyRequest {
		return producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{member}}, Type: typ, Payload: json.RawMessage(`{}`)}
	}
	batch := []producer.BatchNote{
		{IdempotencyKey: "a", Notification: note("m1", "goal")},
		{Notification: note("m2", "not a type")},
		{IdempotencyKey: "a", Notification: note("m1", "goal")},     // the same key and body: replayed
		{IdempotencyKey: "a", Notification: note("m3", "goal")},     // the same key, another body: conflict
		{Notification: producer.NotifyRequest{Type: "goal"}},        // no target
		{IdempotencyKey: "b", Notification: note("m4", "red-card")}, // stored
	}
	res, err := c.NotifyBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	want := []int{202, 400, 202, 409, 400, 202}
	for i, r := range res {
		if r.Status != want[i] || (r.Status == 202) != (r.Reply != nil) || (r.Status != 202) != (r.Error != nil) {
			t.Fatalf("result %d: %+v (reply %+v, error %+v), want status %d", i, r, r.Reply, r.Error, want[i])
		}
	}
	if !res[2].Reply.Replayed || res[2].Reply.ID != res[0].Reply.ID || res[5].Reply.Stored != 1 || res[3].Error.Code != "idempotency_conflict" || res[3].Error.Status != 409 {
		t.Fatalf("results %+v %+v %+v %+v", res[0].Reply, res[2].Reply, res[3].Error, res[5].Reply)
	}
	if rep, err := c.NoteReport(ctx, res[5].Reply.ID); err != nil || rep.Type != "red-card" {
		t.Fatalf("the batch's note report: %+v %v", rep, err)
	}
	big := make([]producer.BatchNote, producer.MaxBatch+1)
	for i := range big {
		big[i] = producer.BatchNote{Notification: note("m1", "goal")}
	}
	var apiErr *producer.APIError
	if _, err := c.NotifyBatch(ctx, big); !errors.As(err, &apiErr) || apiErr.Status != 413 {
		t.Fatalf("a batch over the bound: %v", err)
	}
	if _, err := c.NotifyBatch(ctx, nil); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("an empty batch: %v", err)
	}
}
