package e2e

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/loadgen"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// TestLoadgenLive runs a compressed scenario live against in-process servers:
// real WebSocket devices that prefetch, ack, drop and reconnect; every device
// ends on the last stage, and the report says so.
func TestLoadgenLive(t *testing.T) {
	sc, err := loadgen.ParseScenario([]byte(`
name: e2e
event: e2e-live
duration: 1h
devices: 200
connect: {start: 0s, ramp: 10m}
prefetch: {ttl: 600s}
stages:
  - {at: 15m, stage: kickoff}
  - {at: 30m, stage: halftime}
  - {at: 50m, stage: final}
drops:
  - {at: 40m, fraction: 0.25, backoff_base: 5s, backoff_cap: 30s}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := serveDeployment(t, proxy.Config{}, prefetch.IdentityConfig{})
	cfg.TimeScale, cfg.Settle = 360, 3*time.Second // 1 h in 10 s
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := loadgen.LiveReport(ctx, sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != 200 || r.Connected != 200 || r.Errors != 0 {
		t.Fatalf("devices %d connected %d errors %d", r.Devices, r.Connected, r.Errors)
	}
	if len(r.Broadcasts) != 3 {
		t.Fatalf("broadcasts %+v", r.Broadcasts)
	}
	for _, b := range r.Broadcasts {
		if b.V == 0 || b.T100MS <= 0 {
			t.Fatalf("broadcast %+v has no figures", b)
		}
	}
	if last := r.Broadcasts[2]; last.Missed != 0 {
		t.Fatalf("%d devices missed the last stage (the dropped ones must reconnect and catch up)", last.Missed)
	}
	// Every device prefetched at least once; refreshes add more (TTL 600 s
	// jittered, refresh at 0.5-0.9 of it, compressed 360x: about every 1.2 s).
	if r.Prefetch.Requests < 400 || r.Prefetch.Errors != 0 {
		t.Fatalf("prefetch %+v", r.Prefetch)
	}
	dir := t.TempDir()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s; prefetch %d requests, peak %.0f/s", r.Headline, r.Prefetch.Requests, r.Prefetch.PeakRPS)
}

// TestLoadgenProcs runs the stagecast binary with --procs 2: a forked worker
// runs half the devices, the parent the other half and the stage changes, and
// their results merge into one report.
func TestLoadgenProcs(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "stagecast")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/stagecast/stagecast/cmd/stagecast").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	scenario := filepath.Join(dir, "scenario.yaml")
	if err := os.WriteFile(scenario, []byte(`
name: procs
event: procs-live
duration: 1h
devices: 100
connect: {start: 0s, ramp: 10m}
prefetch: {ttl: 600s}
stages: [{at: 20m, stage: first}, {at: 45m, stage: last}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng := memengine.New(memengine.Config{})
	p, err := proxy.New(proxy.Config{Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Logger: quiet}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ps, bsrv, gsrv := httptest.NewServer(p.Handler()), httptest.NewServer(bs.Handler()), httptest.NewServer(pf.Handler())
	defer ps.Close()
	defer bsrv.Close()
	defer gsrv.Close()
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "loadgen", "live", "--scenario", scenario, "--procs", "2", "--time-scale", "360",
		"--proxy", "ws"+ps.URL[len("http"):]+"/v1/ws", "--graphql", gsrv.URL+"/graphql", "--broadcaster", bsrv.URL,
		"--token", token, "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("loadgen live --procs 2: %v\n%s", err, b)
	}
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r loadgen.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Devices != 100 || r.Connected != 100 || len(r.Broadcasts) != 2 {
		t.Fatalf("merged report: devices %d connected %d broadcasts %d, want 100, 100, 2", r.Devices, r.Connected, len(r.Broadcasts))
	}
	if last := r.Broadcasts[1]; last.V == 0 || last.Missed != 0 || last.T100MS <= 0 {
		t.Fatalf("last broadcast %+v", last)
	}
	if p.Connections() != 0 {
		t.Fatalf("%d devices still connected after the run", p.Connections())
	}
}

// TestLoadgenLiveWithDeviceTokens (issue 23, item 5): against a deployment
// that requires device tokens (proxy and prefetch), a run whose devices mint
// theirs (what --device-key does) passes with every device on every stage and
// no prefetch error; the same run without tokens connects nobody.
func TestLoadgenLiveWithDeviceTokens(t *testing.T) {
	sc, err := loadgen.ParseScenario([]byte(`
name: tokens
event: e2e-tokens
duration: 30m
devices: 60
devices_per_member: 3
platforms: {tv: 0.5, web: 0.5}
connect: {start: 0s, ramp: 5m}
prefetch: {ttl: 600s}
stages:
  - {at: 10m, stage: kickoff}
  - {at: 20m, stage: final}
`))
	if err != nil {
		t.Fatal(err)
	}
	signer, verifier, err := devicetoken.NewTestPair("loadgen")
	if err != nil {
		t.Fatal(err)
	}
	cfg := serveDeployment(t, proxy.Config{Tokens: verifier, RequireToken: true}, prefetch.IdentityConfig{Tokens: verifier, Require: true})
	cfg.TimeScale, cfg.Settle = 360, 3*time.Second // 30 min in 5 s
	members := map[string]int{}
	var mu sync.Mutex
	cfg.Tokens = func(id loadgen.DeviceIdentity) (string, error) {
		mu.Lock()
		members[id.Member]++
		mu.Unlock()
		return signer.Mint(devicetoken.Claims{Device: id.Device, Member: id.Member, Platform: id.Platform, Segment: id.Segment}, time.Hour)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := loadgen.LiveReport(ctx, sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != 60 || r.Connected != 60 || r.Errors != 0 || r.Prefetch.Errors != 0 || r.Prefetch.Requests < 60 {
		t.Fatalf("devices %d connected %d errors %d prefetch %+v", r.Devices, r.Connected, r.Errors, r.Prefetch)
	}
	for _, b := range r.Broadcasts {
		if b.Missed != 0 {
			t.Fatalf("broadcast %+v: missed", b)
		}
	}
	if len(members) != 20 {
		t.Fatalf("%d members for 60 devices at 3 a member", len(members))
	}
	// Without tokens the same deployment refuses every device.
	sc.Devices = 10
	cfg.Tokens = nil
	r, err = loadgen.LiveReport(ctx, sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Connected != 0 || r.Prefetch.Errors == 0 {
		t.Fatalf("without tokens: %d connected, prefetch %+v: the deployment must refuse them", r.Connected, r.Prefetch)
	}
}

// serveDeployment serves a proxy (pcfg), a broadcaster and a prefetch server
// (ident) over one in-memory engine until the test ends, and returns a live
// run's config pointing at them.
func serveDeployment(t *testing.T, pcfg proxy.Config, ident prefetch.IdentityConfig) loadgen.LiveConfig {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng := memengine.New(memengine.Config{})
	pcfg.Logger = quiet
	p, err := proxy.New(pcfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Logger: quiet}, Identity: ident}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ps, bsrv, gsrv := httptest.NewServer(p.Handler()), httptest.NewServer(bs.Handler()), httptest.NewServer(pf.Handler())
	t.Cleanup(func() { ps.Close(); bsrv.Close(); gsrv.Close(); p.Close(); bs.Close() })
	return loadgen.LiveConfig{ProxyURLs: []string{"ws" + ps.URL[len("http"):] + "/v1/ws"}, GraphQLURL: gsrv.URL + "/graphql",
		Broadcaster: bsrv.URL, Token: token}
}
