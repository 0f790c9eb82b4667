package broadcaster_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/hostile"
	"github.com/stagecast/stagecast/internal/wire"
)

// lowCalls records the low lane's engine calls and makes each take lowCallTime.
type lowCalls struct {
	*memengine.Engine
	mu    sync.Mutex
	calls []lowCall
}

type lowCall struct {
	start, end time.Time
	notes      int
}

const lowCallTime = 10 * time.Millisecond

func (l *lowCalls) NotifyMany(ctx context.Context, ws []engine.NoteWrite) []engine.NoteOutcome {
	if ws[0].Note.Priority != wire.PriorityLow { // a lane's group shares a priority
		return l.Engine.NotifyMany(ctx, ws)
	}
	c := lowCall{start: time.Now(), notes: len(ws)}
	time.Sleep(lowCallTime)
	out := l.Engine.NotifyMany(ctx, ws)
	c.end = time.Now()
	l.mu.Lock()
	l.calls = append(l.calls, c)
	l.mu.Unlock()
	return out
}

func (l *lowCalls) recorded() []lowCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lowCall(nil), l.calls...)
}

// sendLow sends n low notes in one batch and checks each was stored.
func sendLow(t *testing.T, c *producer.Client, n int) {
	t.Helper()
	notes := make([]producer.BatchNote, n)
	for i := range notes {
		notes[i].Notification = producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{fmt.Sprintf("m%d", i)}}, Type: "promo", Priority: "low"}
	}
	res, err := c.NotifyBatch(context.Background(), notes)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != 202 || r.Reply == nil || r.Reply.Stored != 1 {
			t.Fatalf("low note %d: %+v, want 202 and stored", i, r)
		}
	}
}

// While high or critical notes flow, low notes reach the engine one small
// group at a time, each call followed by a pause Pause times its length; all
// are still stored. Without urgent notes the low lane groups as usual.
func TestLowLaneYieldsToCriticalNotes(t *testing.T) {
	l := &lowCalls{Engine: memengine.New(memengine.Config{})}
	ly := broadcaster.LowYield{Window: time.Minute, Group: 4, Pause: 2}
	_, url := serve(t, broadcaster.Config{Token: token, LowYield: ly, StageBudget: 5 * time.Second, EngineTimeout: time.Second}, l)
	c := &producer.Client{BaseURL: url, Token: token}

	// No urgent note yet: the lane hands the engine what has queued.
	sendLow(t, c, 40)
	calm := l.recorded()
	if most := maxNotes(calm); most <= ly.Group {
		t.Fatalf("before any urgent note the low lane's calls held at most %d notes, want groups above %d (no yielding)", most, ly.Group)
	}
	if v := lowYieldSeconds(t, url); v != 0 {
		t.Fatalf("the low lane paused %v s before any urgent note", v)
	}

	if _, err := c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Priority: "critical"}, ""); err != nil {
		t.Fatal(err)
	}
	sendLow(t, c, 40)
	calls := l.recorded()[len(calm):]
	total := 0
	for i, call := range calls {
		total += call.notes
		if call.notes > ly.Group {
			t.Errorf("low call %d held %d notes while yielding, want <= %d", i, call.notes, ly.Group)
		}
		if i == 0 {
			continue
		}
		prev := calls[i-1]
		if call.start.Before(prev.end) {
			t.Fatalf("low calls %d and %d overlapped while yielding: one group at a time", i-1, i)
		}
		// The lane measures each call from outside, so its pause is at least
		// Pause times what this engine measured.
		if gap, want := call.start.Sub(prev.end), time.Duration(ly.Pause*float64(prev.end.Sub(prev.start))); gap < want {
			t.Errorf("low call %d started %v after call %d ended, want >= %v (Pause x its %v)", i, gap, i-1, want, prev.end.Sub(prev.start))
		}
	}
	if total != 40 {
		t.Fatalf("the low lane's calls carried %d notes, want 40", total)
	}
	// Every call's pause but the last has ended (the next call waited for it).
	if v, want := lowYieldSeconds(t, url), float64(len(calls)-1)*ly.Pause*lowCallTime.Seconds(); v < want {
		t.Fatalf("low_yield_seconds_total %v after %d yielding calls of >= %v, want >= %v", v, len(calls), lowCallTime, want)
	}
}

func maxNotes(calls []lowCall) int {
	most := 0
	for _, c := range calls {
		most = max(most, c.notes)
	}
	return most
}

// lowYieldSeconds reads notification_low_yield_seconds_total from url's
// /metrics; a missing series fails the test.
func lowYieldSeconds(t *testing.T, url string) float64 {
	t.Helper()
	const name = "stagecast_broadcaster_notification_low_yield_seconds_total"
	mfs, err := hostile.Metrics(context.Background(), url+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if mfs[name] == nil {
		t.Fatalf("no %s", name)
	}
	return hostile.Value(mfs, name)
}

func TestLowYieldValidation(t *testing.T) {
	for _, ly := range []broadcaster.LowYield{
		{Group: broadcaster.DefaultLowYield.Group + 100},
		{Group: -1},
		{Pause: -1},
	} {
		cfg := broadcaster.DefaultConfig()
		cfg.Token = token
		if ly.Group != 0 {
			cfg.LowYield.Group = ly.Group
		}
		if ly.Pause != 0 {
			cfg.LowYield.Pause = ly.Pause
		}
		if _, err := broadcaster.New(cfg, memengine.New(memengine.Config{})); err == nil || !strings.Contains(err.Error(), "LowYield") {
			t.Errorf("LowYield %+v: %v, want a LowYield error", cfg.LowYield, err)
		}
	}
}

// A negative Window turns yielding off: after a critical note the low lane
// still groups what has queued, and never pauses.
func TestLowYieldOff(t *testing.T) {
	l := &lowCalls{Engine: memengine.New(memengine.Config{})}
	ly := broadcaster.LowYield{Window: -1, Group: 4, Pause: 2}
	_, url := serve(t, broadcaster.Config{Token: token, LowYield: ly, StageBudget: 5 * time.Second, EngineTimeout: time.Second}, l)
	c := &producer.Client{BaseURL: url, Token: token}
	if _, err := c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Priority: "critical"}, ""); err != nil {
		t.Fatal(err)
	}
	sendLow(t, c, 40)
	if most := maxNotes(l.recorded()); most <= ly.Group {
		t.Fatalf("with yielding off the low lane's calls held at most %d notes after a critical one, want groups above %d", most, ly.Group)
	}
	if v := lowYieldSeconds(t, url); v != 0 {
		t.Fatalf("with yielding off the low lane paused %v s", v)
	}
}

// A pause never exceeds Window: a long engine call (a failing Redis, retried
// up to StageBudget) must not stop the low lane for Pause times that.
func TestLowYieldPauseIsAtMostTheWindow(t *testing.T) {
	l := &lowCalls{Engine: memengine.New(memengine.Config{})}
	// Each low call takes >= 10 ms, so Pause 100 would pause >= 1 s uncapped.
	ly := broadcaster.LowYield{Window: 300 * time.Millisecond, Group: 4, Pause: 100}
	_, url := serve(t, broadcaster.Config{Token: token, LowYield: ly, StageBudget: 5 * time.Second, EngineTimeout: time.Second}, l)
	c := &producer.Client{BaseURL: url, Token: token}
	if _, err := c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Priority: "high"}, ""); err != nil {
		t.Fatal(err)
	}
	sendLow(t, c, 2*ly.Group)
	calls := len(l.recorded())
	time.Sleep(2 * ly.Window) // the last call's pause ends
	v := lowYieldSeconds(t, url)
	// At least the first call yielded (the high note was just queued); every
	// pause is at most Window, where uncapped each would be >= 1 s.
	if most := float64(calls) * ly.Window.Seconds(); v < ly.Window.Seconds()-1e-9 || v > most+1e-9 {
		t.Fatalf("low_yield_seconds_total %v after %d low calls, want between %v and %v: each pause capped at Window (uncapped >= %v each)",
			v, calls, ly.Window, time.Duration(most*float64(time.Second)), time.Duration(ly.Pause*float64(lowCallTime)))
	}
}
