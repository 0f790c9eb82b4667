//go:build !race

// The game day compares the simulator's recovery times with measured ones (30 %
// band): a timing test, run without the race detector and alone, as the
// calibration test is (make test's second step).

package localcluster_test

import (
	"context"
	"io"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/localcluster"
	"github.com/stagecast/stagecast/loadgen"
)

// TestGameDayFaults plays a compressed fight night with live devices against a
// local fleet while loadgen injects a proxy kill, a proxy drain and a Redis
// master kill through the fleet's control interface. Every fault must be
// recovered (every device connected again and on the latest stage) within 20 s,
// and no device may miss the last stage.
func TestGameDayFaults(t *testing.T) {
	bin := buildStagecast(t)
	cfg := localcluster.Config{Stagecast: bin, Dir: t.TempDir(), Token: "game-day-token-0123456789abcdef"}
	if err := localcluster.FreePorts(&cfg); err != nil {
		t.Fatal(err)
	}
	ready := make(chan localcluster.Info, 1)
	cfg.Ready = func(i localcluster.Info) { ready <- i }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- localcluster.Run(ctx, cfg) }()
	defer func() { cancel(); <-done }()
	var info localcluster.Info
	select {
	case info = <-ready:
	case err := <-done:
		t.Fatalf("fleet did not start: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("fleet not ready within 90 s")
	}
	sc, err := loadgen.ParseScenario([]byte(`
name: game-day-test
event: game-day
duration: 40m
devices: 300
connect: {start: 0s, ramp: 5m}
prefetch: {ttl: 3600s}
fleet: {directed_drain: true}  # the local fleet's proxies publish --public-url
stages:
  - {at: 6m, stage: round-1}
  - {at: 12m, stage: round-2}
  - {at: 20m, stage: round-3}
  - {at: 28m, stage: knockout}
  - {at: 35m, stage: post-fight}
faults:
  - {at: 10m, action: proxy-kill, target: "0"}
  - {at: 17m, action: proxy-drain, target: "1", window: 3s}
  - {at: 24m, action: redis-master-kill, target: random}
`))
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := loadgen.OpenFleetControl(filepath.Join(cfg.Dir, localcluster.ControlFile))
	if err != nil {
		t.Fatal(err)
	}
	lc := loadgen.LiveConfig{ProxyURLs: info.Proxies, GraphQLURL: info.Prefetch[0], Broadcaster: info.Broadcaster,
		Token: cfg.Token, TimeScale: 60, Settle: 3 * time.Second, Fleet: fleet, Log: io.Discard} // 40 min in 40 s
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer rcancel()
	rep, err := loadgen.LiveReport(rctx, sc, lc)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(rep.Headline)
	if len(rep.Faults) != 3 {
		t.Fatalf("faults %+v", rep.Faults)
	}
	for _, f := range rep.Faults {
		t.Logf("%s %s: %d affected, %d reconnects (peak %.0f/s), recovered in %.0f ms, producer blocked %.0f ms, %d missed",
			f.Action, f.Member, f.DevicesAffected, f.Reconnects, f.ReconnectPeakPerS, f.RecoveredMS, f.ProducerBlockedMS, f.Missed)
		if f.Error != "" || f.RecoveredMS < 0 || f.RecoveredMS > 20000 || f.Missed != 0 {
			t.Errorf("fault %s not recovered within 20 s with nobody missing the end: %+v", f.Action, f)
		}
	}
	if f := rep.Faults[0]; f.DevicesAffected == 0 || f.Reconnects == 0 || !strings.HasPrefix(f.Member, "proxy-") {
		t.Errorf("the proxy kill moved no device: %+v", f)
	}
	if !strings.Contains(rep.Headline, "every device recovered") {
		t.Errorf("headline %q", rep.Headline)
	}
	// The simulator, given this run's calibration and fleet, predicts each proxy
	// fault's recovery within 30% of what was measured.
	sim := loadgen.Simulate(sc, loadgen.SimOptions{Proxies: len(info.Proxies), Calibration: rep.Calibration})
	for i, f := range rep.Faults[:2] {
		p := sim.Faults[i].RecoveredMS
		t.Logf("%s: simulated %.0f ms, measured %.0f ms (%+.0f%%)", f.Action, p, f.RecoveredMS, 100*(p-f.RecoveredMS)/f.RecoveredMS)
		if math.Abs(p-f.RecoveredMS) > 0.3*f.RecoveredMS {
			t.Errorf("%s: the simulator predicts %.0f ms, the live run took %.0f ms: more than 30%% apart", f.Action, p, f.RecoveredMS)
		}
	}
	// Without a fleet the same scenario is refused, never run without its faults.
	lc.Fleet = nil
	if _, err := loadgen.Live(rctx, sc, lc); err == nil || !strings.Contains(err.Error(), "--fleet") {
		t.Fatalf("a scenario with faults and no fleet: %v, want a refusal naming --fleet", err)
	}
}
