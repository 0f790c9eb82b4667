package broadcaster

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
)

// TestAheadGauges (issue 23, item 3): what an autoscaler scales on before the
// moment: seconds to the next armed stage (the horizon when none), how many
// are armed within 15 min and the hour, how many windows are live.
func TestAheadGauges(t *testing.T) {
	now := time.UnixMilli(1796160000000)
	eng := memengine.New(memengine.Config{Now: func() time.Time { return now }})
	s, err := New(Config{Token: "ahead-test-token-0123456789", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: func() time.Time { return now }}, eng)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.refreshAhead(ctx)
	if got := testutil.ToFloat64(s.ahead.next); got != AheadHorizon.Seconds() {
		t.Fatalf("nothing armed: next %v, want the horizon %v", got, AheadHorizon.Seconds())
	}
	for i, in := range []time.Duration{10 * time.Minute, 40 * time.Minute, 2 * time.Hour} {
		if _, err := eng.Arm(ctx, engine.ArmRequest{Event: "ev", ID: "s" + string(rune('a'+i)), AtMS: now.Add(in).UnixMilli(), Key: "round"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ev := range []string{"ev", "other"} { // two events with maps, one of them live
		if _, err := eng.PutStageMap(ctx, ev, []byte(`{"stages":{}}`), now.UnixMilli()); err != nil {
			t.Fatal(err)
		}
	}
	if err := eng.SetLive(ctx, "ev", true); err != nil {
		t.Fatal(err)
	}
	s.refreshAhead(ctx)
	if got := testutil.ToFloat64(s.ahead.next); got != 600 {
		t.Fatalf("next armed in %v s, want 600", got)
	}
	if a15, a60 := testutil.ToFloat64(s.ahead.armed.WithLabelValues("15m")), testutil.ToFloat64(s.ahead.armed.WithLabelValues("60m")); a15 != 1 || a60 != 2 {
		t.Fatalf("armed within 15m %v, 60m %v; want 1 and 2 (the third is past the hour)", a15, a60)
	}
	if got := testutil.ToFloat64(s.ahead.live); got != 1 {
		t.Fatalf("live events %v, want 1", got)
	}
}
