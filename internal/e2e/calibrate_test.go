//go:build !race

// The calibration compares timings: it runs without the race detector, which
// slows everything about tenfold (make test runs it in its own step).

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/loadgen"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// TestSimulatorCalibration: a live run at small scale (5,000 devices, 2 proxies,
// real Redis); the simulator, calibrated on half of its broadcasts, predicts the
// time to 99% delivery of the other half within 30% of what was measured.
func TestSimulatorCalibration(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet}, newEngine(t, srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	pf, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Logger: quiet}}, newEngine(t, srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for i := 0; i < 2; i++ {
		p, err := proxy.New(proxy.Config{ID: fmt.Sprintf("cal-%d", i), Logger: quiet, ReconcileInterval: time.Hour, IPLimitExempt: loopback}, newEngine(t, srv.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		ps := httptest.NewServer(p.Handler())
		t.Cleanup(ps.Close)
		urls = append(urls, "ws"+ps.URL[len("http"):]+"/v1/ws")
	}
	bsrv, gsrv := httptest.NewServer(bs.Handler()), httptest.NewServer(pf.Handler())
	defer bsrv.Close()
	defer gsrv.Close()
	sc, err := loadgen.ParseScenario([]byte(`
name: calibration
event: calibration
duration: 30m
devices: 5000
connect: {start: 0s, ramp: 4m}
prefetch: {ttl: 3600s}
stages:
  - {at: 6m, stage: s1}
  - {at: 9m, stage: s2}
  - {at: 12m, stage: s3}
  - {at: 15m, stage: s4}
  - {at: 18m, stage: s5}
  - {at: 21m, stage: s6}
  - {at: 24m, stage: s7}
  - {at: 27m, stage: s8}
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := loadgen.LiveReport(ctx, sc, loadgen.LiveConfig{ProxyURLs: urls, GraphQLURL: gsrv.URL + "/graphql", Broadcaster: bsrv.URL,
		Token: token, TimeScale: 60, Settle: 3 * time.Second, SourceIPs: []string{"127.0.0.2", "127.0.0.3"}}) // 30 min in 30 s
	if err != nil {
		t.Fatal(err)
	}
	if rep.Connected != 5000 || rep.Broadcasts[len(rep.Broadcasts)-1].Missed != 0 {
		t.Fatalf("live run: %s", rep.Headline)
	}
	// Calibrate on s1, s3, s5, s7; predict s2, s4, s6, s8.
	// By stage name: versions follow the clock, so their parity says nothing.
	odd := func(b loadgen.BroadcastStats) bool {
		n, err := strconv.Atoi(strings.TrimPrefix(b.Stage, "s"))
		return err == nil && n%2 == 1
	}
	cal := loadgen.CalibrateFrom(sc, rep, odd)
	if cal == nil {
		t.Fatal("no calibration")
	}
	sim := loadgen.Simulate(sc, loadgen.SimOptions{Proxies: 2, Calibration: cal})
	var measured []float64
	for _, b := range rep.Broadcasts {
		if !odd(b) {
			measured = append(measured, b.T99MS)
		}
	}
	sort.Float64s(measured)
	got := measured[len(measured)/2]
	predicted := sim.Broadcasts[len(sim.Broadcasts)-1].T99MS
	t.Logf("calibration %.0f deliveries/s per proxy, hop %.1f ms; t99 predicted %.0f ms, measured (median of held-out broadcasts) %.0f ms (all: %v)",
		cal.FanoutRate, cal.PubSubMS, predicted, got, measured)
	if math.Abs(predicted-got)/got > 0.30 {
		t.Fatalf("predicted t99 %.0f ms vs measured %.0f ms: off by %.0f%% (> 30%%)", predicted, got, 100*math.Abs(predicted-got)/got)
	}
}
