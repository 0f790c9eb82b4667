package broadcaster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

// POST .../schedule arms a stage (validated: a time 200 ms to 7 days ahead);
// the broadcaster fires it centrally at its time with the armed version;
// DELETE needs the version and wins before the time.
func TestScheduleAPI(t *testing.T) {
	_, eng, url := start(t)
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Idempotency-Key", "k-"+body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, readAll(resp))
		return resp.StatusCode, b.String()
	}
	now := time.Now()
	if code, body := do("POST", "/v1/events/fight/schedule", fmt.Sprintf(`{"stage":"ko","at":%d}`, now.UnixMilli())); code != 400 || !strings.Contains(body, "ahead") {
		t.Fatalf("a schedule in the past: %d %s", code, body)
	}
	at := now.Add(400 * time.Millisecond).UnixMilli()
	code, body := do("POST", "/v1/events/fight/schedule", fmt.Sprintf(`{"stage":"ko","at":%d}`, at))
	if code != 201 || !strings.Contains(body, `"state":"armed"`) || !strings.Contains(body, fmt.Sprintf(`"v":%d`, at*1000)) {
		t.Fatalf("arm: %d %s", code, body)
	}
	// The same key again: the same schedule.
	if code2, body2 := do("POST", "/v1/events/fight/schedule", fmt.Sprintf(`{"stage":"ko","at":%d}`, at)); code2 != 201 || body2 != body {
		t.Fatalf("re-arm with the same key: %d %s", code2, body2)
	}
	later := now.Add(time.Hour).UnixMilli()
	_, body = do("POST", "/v1/events/fight/schedule", fmt.Sprintf(`{"stage":"never","at":%d}`, later))
	var id string
	if i := strings.Index(body, `"id":"`); i >= 0 {
		id = body[i+6 : i+6+strings.Index(body[i+6:], `"`)]
	}
	if code, _ := do("DELETE", "/v1/events/fight/schedule/"+id, ""); code != 400 {
		t.Fatalf("cancel without v: %d", code)
	}
	if code, _ := do("DELETE", fmt.Sprintf("/v1/events/fight/schedule/%s?v=%d", id, later*1000+1), ""); code != 409 {
		t.Fatalf("cancel with another v: %d", code)
	}
	if code, body := do("DELETE", fmt.Sprintf("/v1/events/fight/schedule/%s?v=%d", id, later*1000), ""); code != 200 || !strings.Contains(body, "cancelled") {
		t.Fatalf("cancel: %d %s", code, body)
	}
	if code, _ := do("DELETE", fmt.Sprintf("/v1/events/fight/schedule/%s?v=%d", id, later*1000), ""); code != 404 {
		t.Fatalf("cancel again: %d", code)
	}
	waitfor.True(t, 5*time.Second, "the central fire", func() bool {
		rec, _ := eng.Recent(context.Background(), "fight", 5)
		return len(rec) == 1 && rec[0].Key == "ko" && rec[0].V == uint64(at)*1000
	})
	if code, body := do("GET", "/v1/events/fight/schedule", ""); code != 200 || !strings.Contains(body, `"schedules":[]`) {
		t.Fatalf("list after fire and cancel: %d %s", code, body)
	}
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// TestRefusalsNeverTripTheStageBreaker (hardening #6): 70 arms on one event
// (the 65th and later refused 409 schedule_limit, a conflict 409 too) and the
// event's next live stage change still goes through at once.
func TestRefusalsNeverTripTheStageBreaker(t *testing.T) {
	c, _, _ := start(t)
	ctx := context.Background()
	at := time.Now().Add(time.Hour).UnixMilli()
	for i := range 70 {
		_, err := c.Arm(ctx, "busy", broadcaster.ScheduleRequest{Stage: "k", At: at + int64(i)}, fmt.Sprintf("key-%d", i))
		switch {
		case i < engine.MaxSchedules && err != nil:
			t.Fatalf("arm %d: %v", i, err)
		case i >= engine.MaxSchedules:
			apiErr(t, err, 409, "schedule_limit")
		}
	}
	_, err := c.Arm(ctx, "busy", broadcaster.ScheduleRequest{Stage: "other", At: at}, "key-0")
	apiErr(t, err, 409, "idempotency_conflict")
	if _, err := c.SetStage(ctx, "busy", "live", nil, ""); err != nil {
		t.Fatalf("a live change after the refusals: %v", err)
	}
}

// badShard fails fires of one event (its shard failing over).
type badShard struct {
	*memengine.Engine
	bad string
}

func (b *badShard) FireSchedule(ctx context.Context, event, id string) (wire.Stage, error) {
	if strings.HasPrefix(event, b.bad) {
		return wire.Stage{}, errors.New("redis: MOVED/CLUSTERDOWN")
	}
	return b.Engine.FireSchedule(ctx, event, id)
}

// TestFireLoopSkipsWhatFails (hardening #8): 150 due schedules of events whose
// shard fails, all due before one of another event: that one still fires
// (the due index lists 100 at a time, oldest first).
func TestFireLoopSkipsWhatFails(t *testing.T) {
	eng := &badShard{Engine: memengine.New(memengine.Config{}), bad: "stuck-"}
	s, err := broadcaster.New(broadcaster.Config{Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx := context.Background()
	at := time.Now().Add(300 * time.Millisecond).UnixMilli()
	for i := range 150 {
		ev := fmt.Sprintf("stuck-%d", i%3)
		if _, err := eng.Arm(ctx, engine.ArmRequest{ID: fmt.Sprintf("s%d", i), Event: ev, Key: "k", AtMS: at}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := eng.Arm(ctx, engine.ArmRequest{ID: "late", Event: "healthy", Key: "go", AtMS: at + 50}); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "the healthy event's schedule fired", func() bool {
		r, _ := eng.Recent(ctx, "healthy", 1)
		return len(r) == 1 && r[0].Key == "go"
	})
}
