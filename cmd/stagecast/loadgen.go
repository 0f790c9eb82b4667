package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/localcluster"
	"github.com/stagecast/stagecast/loadgen"
)

const loadgenUsage = `Usage:
  stagecast loadgen simulate --scenario FILE [--devices N] [--proxies P] [--no-jitter] [--out DIR]
      the scenario at full scale without sockets; writes DIR/report.json and DIR/report.html
  stagecast loadgen simulate --scenario FILE --calibrate live/report.json
      the same, with the fanout rate and delays a live run measured
  stagecast loadgen live --scenario FILE [--devices N] [--time-scale X] [--procs N] [--token T] [--out DIR]
      real devices (WebSocket + GraphQL prefetch) against a deployment; defaults point at make run
      [--device-key KEY.jwk | --device-tokens FILE]: a device token per device, where they are required
  stagecast loadgen live ... --segment i/n --partial-out FILE
      one share of a run spread over machines; then:
  stagecast loadgen merge --scenario FILE --out DIR share-0.json share-1.json ...
`

func runLoadgen(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, loadgenUsage)
		return errors.New("missing mode")
	}
	switch args[0] {
	case "simulate":
		return runSimulate(args[1:])
	case "live":
		return runLive(args[1:])
	case "merge":
		return runMerge(args[1:])
	default:
		fmt.Fprint(os.Stderr, loadgenUsage)
		return fmt.Errorf("unknown loadgen mode %q", args[0])
	}
}

func runSimulate(args []string) error {
	fs := flag.NewFlagSet("loadgen simulate", flag.ContinueOnError)
	scenario := fs.String("scenario", "", "scenario file (YAML or JSON), e.g. loadgen/scenarios/fight-night.yaml")
	var o loadgen.SimOptions
	fs.Int64Var(&o.Devices, "devices", 0, "override the scenario's device population")
	fs.IntVar(&o.Proxies, "proxies", 0, "override the fleet size (default: the scenario's, else what the peak needs)")
	fs.BoolVar(&o.NoJitter, "no-jitter", false, "exact TTLs and refreshes: shows the herd")
	calib := fs.String("calibrate", "", "a live run's report.json: use the fanout rate and delays it measured")
	out := fs.String("out", "", "write report.json and report.html here")
	if err := parse(fs, args); err != nil {
		return err
	}
	sc, err := scenarioFlag(*scenario)
	if err != nil {
		return err
	}
	if *calib != "" {
		if o.Calibration, err = loadgen.ReadCalibration(*calib); err != nil {
			return err
		}
		fmt.Printf("calibrated from %s: %.0f deliveries/s per proxy, %.1f ms publish hop\n", *calib, o.Calibration.FanoutRate, o.Calibration.PubSubMS)
	}
	r := loadgen.Simulate(sc, o)
	fmt.Println(r.Headline)
	printAllConnected(r)
	fmt.Printf("prefetch: %d requests, peak %.0f/s, mean %.0f/s, refresh peak %.0f/s", r.Prefetch.Requests, r.Prefetch.PeakRPS, r.Prefetch.MeanRPS, r.Prefetch.RefreshPeakRPS)
	if r.NoJitter != nil {
		fmt.Printf("; without jitter refreshes would peak at %.0f/s (%.1fx)", r.NoJitter.RefreshPeakRPS, r.NoJitter.Ratio)
	}
	fmt.Printf("\nbroadcasts:\n")
	for _, b := range r.Broadcasts {
		fmt.Printf("  v%-3d %-16s at %6.0fs  %10d devices  50%% %7.0f ms  99%% %7.0f ms  100%% %7.0f ms  missed %d\n", b.V, b.Stage, b.AtS, b.Devices, b.T50MS, b.T99MS, b.T100MS, b.Missed)
	}
	printFaults(r.Faults)
	fmt.Printf("simulated in %.2f s\n", r.WallSeconds)
	if *out != "" {
		if err := r.Write(*out); err != nil {
			return err
		}
		fmt.Printf("report: %s/report.json, %s/report.html\n", *out, *out)
	}
	return nil
}

func runLive(args []string) error {
	fs := flag.NewFlagSet("loadgen live", flag.ContinueOnError)
	scenario := fs.String("scenario", "", "scenario file (YAML or JSON)")
	proxies := fs.String("proxy", "ws://127.0.0.1:8080/v1/ws", "proxy URL(s), comma-separated")
	var cfg loadgen.LiveConfig
	fs.StringVar(&cfg.GraphQLURL, "graphql", "http://127.0.0.1:8082/graphql", "prefetch API")
	fs.StringVar(&cfg.Broadcaster, "broadcaster", "http://127.0.0.1:8081", "broadcaster (stage changes)")
	fs.StringVar(&cfg.Token, "token", os.Getenv("STAGECAST_PRODUCER_TOKEN"), "producer token (default $STAGECAST_PRODUCER_TOKEN)")
	fs.Int64Var(&cfg.Devices, "devices", 0, "override the scenario's device population")
	fs.Float64Var(&cfg.TimeScale, "time-scale", 0, "compress the timeline by this factor (default: fit the scenario in 60 s)")
	segment := fs.String("segment", "0/1", "run share i of n of the devices (i/n); share 0 also makes the stage changes")
	srcIPs := fs.String("source-ips", "", "spread connections over these loopback addresses, e.g. 127.0.0.2-127.0.0.9")
	out := fs.String("out", "", "write report.json and report.html here")
	procs := fs.Int("procs", 1, "fork this many worker processes on this machine (each holds at most ~19,000 connections here)")
	partialOut := fs.String("partial-out", "", "write this share's raw results here (for loadgen merge) instead of a report")
	startAt := fs.Int64("start-at", 0, "Unix ms at which the run starts (aligns shares; default now)")
	quiet := fs.Bool("quiet", false, "no progress output (workers of --procs)")
	fleet := fs.String("fleet", "", "inject the scenario's faults into this fleet: its control.json (make cluster prints its folder), or \"local\" to start one here for the run")
	deviceKey := fs.String("device-key", "", "a device-token signing key (stagecast token keygen's device-signing.jwk): mint a token per simulated device, for a deployment that requires them")
	deviceTokens := fs.String("device-tokens", "", "a file of pre-minted device tokens, one per line: device i uses line i (instead of --device-key)")
	if err := parse(fs, args); err != nil {
		return err
	}
	sc, err := scenarioFlag(*scenario)
	if err != nil {
		return err
	}
	if cfg.Tokens, err = deviceTokenSource(*deviceKey, *deviceTokens, sc, cfg.TimeScale); err != nil {
		return err
	}
	if _, err := fmt.Sscanf(*segment, "%d/%d", &cfg.Segment, &cfg.Segments); err != nil || cfg.Segments < 1 || cfg.Segment < 0 || cfg.Segment >= cfg.Segments {
		return fmt.Errorf("--segment %q: want i/n with 0 <= i < n", *segment)
	}
	if cfg.Token == "" && cfg.Segment == 0 {
		return errors.New("--token (or STAGECAST_PRODUCER_TOKEN) is required to make the stage changes")
	}
	cfg.ProxyURLs = splitAddrs(*proxies)
	if cfg.SourceIPs, err = loadgen.ParseIPRange(*srcIPs); err != nil {
		return err
	}
	if cfg.TimeScale == 0 {
		cfg.TimeScale = max(1, sc.Duration.D().Seconds()/60)
	}
	if *startAt > 0 {
		cfg.StartAt = time.UnixMilli(*startAt)
	}
	ctx, stop := signalContext()
	defer stop()
	switch *fleet {
	case "":
	case "local":
		if *procs > 1 || *partialOut != "" {
			return errors.New("--fleet local starts one fleet for one process: with --procs or shares, start `make cluster` and pass its control.json")
		}
		stopFleet, err := startLocalFleet(ctx, &cfg)
		if err != nil {
			return err
		}
		defer stopFleet()
	default:
		if cfg.Fleet, err = loadgen.OpenFleetControl(*fleet); err != nil {
			return err
		}
	}
	// Progress fits where it goes: a bar on a terminal, a line every 5 s in a
	// file or CI log, nothing with --quiet.
	cfg.Progress = "lines"
	if term.IsTerminal(int(os.Stdout.Fd())) {
		cfg.Progress = "bar"
	}
	if *quiet {
		cfg.Progress = "none"
	}
	if *partialOut != "" { // a worker or one machine's share: raw results only
		cfg.Log = os.Stderr
		if *quiet {
			cfg.Log = io.Discard
		}
		p, err := loadgen.Live(ctx, sc, cfg)
		if err != nil {
			return err
		}
		return p.WriteFile(*partialOut)
	}
	cfg.Log = os.Stdout
	fmt.Printf("%s: %d devices in %d process(es), %v of scenario in %.0f s (time scale %.0fx)\n", sc.Name, devicesOf(cfg.Devices, sc.Devices), *procs, sc.Duration.D(), sc.Duration.D().Seconds()/cfg.TimeScale, cfg.TimeScale)
	var parts []*loadgen.Partial
	if *procs > 1 {
		if cfg.Segments != 1 {
			return errors.New("--procs splits this machine's run; do not combine it with --segment")
		}
		parts, err = runWorkers(ctx, sc, args, *procs, cfg)
	} else {
		var p *loadgen.Partial
		p, err = loadgen.Live(ctx, sc, cfg)
		parts = []*loadgen.Partial{p}
	}
	if err != nil {
		return err
	}
	r, err := loadgen.Merge(sc, parts)
	if err != nil {
		return err
	}
	return printLiveReport(r, *out)
}

// deviceTokenSource is the loadgen's device tokens: minted per device from a
// signing key (living for the compressed run plus 10 minutes), or read from a
// file of pre-minted ones (device i uses line i); nil when neither is given.
func deviceTokenSource(keyFile, tokensFile string, sc *loadgen.Scenario, timeScale float64) (func(loadgen.DeviceIdentity) (string, error), error) {
	switch {
	case keyFile != "" && tokensFile != "":
		return nil, errors.New("--device-key and --device-tokens: give one")
	case keyFile != "":
		signer, err := devicetoken.LoadSigner(keyFile)
		if err != nil {
			return nil, fmt.Errorf("--device-key: %w", err)
		}
		scale := timeScale
		if scale <= 0 { // the default --time-scale: the scenario fit in 60 s
			scale = max(1, sc.Duration.D().Seconds()/60)
		}
		ttl := time.Duration(float64(sc.Duration.D())/scale) + 10*time.Minute
		return func(id loadgen.DeviceIdentity) (string, error) {
			return signer.Mint(devicetoken.Claims{Device: id.Device, Member: id.Member, Platform: id.Platform, Segment: id.Segment}, ttl)
		}, nil
	case tokensFile != "":
		b, err := os.ReadFile(tokensFile)
		if err != nil {
			return nil, fmt.Errorf("--device-tokens: %w", err)
		}
		var toks []string
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				toks = append(toks, l)
			}
		}
		return func(id loadgen.DeviceIdentity) (string, error) {
			if id.Index >= int64(len(toks)) {
				return "", fmt.Errorf("--device-tokens holds %d tokens; device %d has none", len(toks), id.Index)
			}
			return toks[id.Index], nil
		}, nil
	}
	return nil, nil
}

// runWorkers forks procs-1 copies of this command for shares 1..procs-1 (each
// with its own block of the source addresses), runs share 0 here, and collects
// every share's results. All start at the same instant.
func runWorkers(ctx context.Context, sc *loadgen.Scenario, args []string, procs int, cfg loadgen.LiveConfig) ([]*loadgen.Partial, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "stagecast-loadgen-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	start := time.Now().Add(2 * time.Second)
	block := func(i int) []string {
		n := len(cfg.SourceIPs)
		return cfg.SourceIPs[i*n/procs : (i+1)*n/procs]
	}
	type worker struct {
		cmd  *exec.Cmd
		path string
	}
	var ws []worker
	for i := 1; i < procs; i++ {
		path := filepath.Join(dir, fmt.Sprintf("part-%d.json", i))
		wargs := append([]string{"loadgen", "live"}, args...) // later flags win
		wargs = append(wargs, "--quiet", "--procs", "1", "--segment", fmt.Sprintf("%d/%d", i, procs), "--partial-out", path,
			"--start-at", strconv.FormatInt(start.UnixMilli(), 10), "--time-scale", strconv.FormatFloat(cfg.TimeScale, 'f', -1, 64))
		if b := block(i); len(b) > 0 {
			wargs = append(wargs, "--source-ips", b[0]+"-"+b[len(b)-1])
		}
		cmd := exec.CommandContext(ctx, self, wargs...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("worker %d: %w", i, err)
		}
		ws = append(ws, worker{cmd, path})
	}
	cfg.Segment, cfg.Segments, cfg.StartAt = 0, procs, start
	if b := block(0); len(b) > 0 || len(cfg.SourceIPs) > 0 {
		cfg.SourceIPs = b
	}
	p0, err := loadgen.Live(ctx, sc, cfg)
	if err != nil {
		return nil, err
	}
	parts := []*loadgen.Partial{p0}
	for i, w := range ws {
		if err := w.cmd.Wait(); err != nil {
			return nil, fmt.Errorf("worker %d: %w", i+1, err)
		}
		p, err := loadgen.ReadPartial(w.path)
		if err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	return parts, nil
}

func runMerge(args []string) error {
	fs := flag.NewFlagSet("loadgen merge", flag.ContinueOnError)
	scenario := fs.String("scenario", "", "the scenario the shares ran")
	out := fs.String("out", "", "write report.json and report.html here")
	if err := parse(fs, args); err != nil {
		return err
	}
	files := positional(fs)
	if len(files) == 0 {
		return errors.New("usage: stagecast loadgen merge --scenario FILE [--out DIR] share.json [share.json ...]")
	}
	sc, err := scenarioFlag(*scenario)
	if err != nil {
		return err
	}
	var parts []*loadgen.Partial
	for _, f := range files {
		p, err := loadgen.ReadPartial(f)
		if err != nil {
			return err
		}
		parts = append(parts, p)
	}
	r, err := loadgen.Merge(sc, parts)
	if err != nil {
		return err
	}
	return printLiveReport(r, *out)
}

func printLiveReport(r *loadgen.Report, out string) error {
	fmt.Println(r.Headline)
	printAllConnected(r)
	for _, b := range r.Broadcasts {
		fmt.Printf("  v%-3d %-16s 50%% %6.0f ms  99%% %6.0f ms  100%% %6.0f ms  missed %d\n", b.V, b.Stage, b.T50MS, b.T99MS, b.T100MS, b.Missed)
	}
	printFaults(r.Faults)
	fmt.Printf("prefetch: %d requests, peak %.0f/s, %d errors; %d errors in all\n", r.Prefetch.Requests, r.Prefetch.PeakRPS, r.Prefetch.Errors, r.Errors)
	if c := r.Calibration; c != nil {
		fmt.Printf("calibration: %.0f deliveries/s per proxy, %.1f ms publish hop (simulate --calibrate report.json)\n", c.FanoutRate, c.PubSubMS)
	}
	if out != "" {
		if err := r.Write(out); err != nil {
			return err
		}
		fmt.Printf("report: %s/report.json, %s/report.html\n", out, out)
	}
	return nil
}

// scenarioFlag loads the --scenario file every loadgen mode needs.
func scenarioFlag(path string) (*loadgen.Scenario, error) {
	if path == "" {
		return nil, errors.New("--scenario is required")
	}
	return loadgen.LoadScenario(path)
}

// startLocalFleet starts a make-cluster fleet on free loopback ports for one
// run and points cfg at it (proxies, prefetch, broadcaster, control).
func startLocalFleet(ctx context.Context, cfg *loadgen.LiveConfig) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "stagecast-loadgen-fleet-")
	if err != nil {
		return nil, err
	}
	lc := localcluster.Config{Stagecast: self, Dir: dir, Token: cfg.Token, Out: os.Stdout, Links: true}
	if err := localcluster.FreePorts(&lc); err != nil {
		return nil, err
	}
	ready := make(chan localcluster.Info, 1)
	lc.Ready = func(i localcluster.Info) { ready <- i }
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- localcluster.Run(fctx, lc) }()
	select {
	case info := <-ready:
		cfg.ProxyURLs, cfg.GraphQLURL, cfg.Broadcaster = info.Proxies, info.Prefetch[0], info.Broadcaster
		if cfg.Fleet, err = loadgen.OpenFleetControl(filepath.Join(dir, localcluster.ControlFile)); err != nil {
			cancel()
			<-done
			return nil, err
		}
		return func() { cancel(); <-done }, nil
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("local fleet: %w", err)
	case <-ctx.Done():
		cancel()
		<-done
		return nil, ctx.Err()
	}
}

// printAllConnected says how long until every device was connected (a
// connect storm's figure: live, measured; simulated, the admission model's).
func printAllConnected(r *loadgen.Report) {
	switch {
	case r.AllConnectedS > 0 && r.Mode == "simulate":
		fmt.Printf("connect storm: every device connected %.1f s after the connect start (the admission model)\n", r.AllConnectedS)
	case r.AllConnectedS > 0:
		fmt.Printf("every device connected %.1f s after the connect start\n", r.AllConnectedS)
	case r.AllConnectedS < 0:
		fmt.Println("NOT every device was connected at once during the run")
	}
}

func printFaults(fs []loadgen.FaultStats) {
	for _, f := range fs {
		if f.Error != "" {
			fmt.Printf("  fault %-18s at %6.0fs  %s\n", f.Action, f.AtS, f.Error)
			continue
		}
		rec := fmt.Sprintf("%.0f ms", f.RecoveredMS)
		if f.RecoveredMS < 0 {
			rec = "NOT recovered"
		}
		fmt.Printf("  fault %-18s at %6.0fs  %-14s %8d devices affected, %8d reconnects (peak %.0f/s), recovered in %s, producer blocked %.0f ms, %d missed\n",
			f.Action, f.AtS, f.Member, f.DevicesAffected, f.Reconnects, f.ReconnectPeakPerS, rec, f.ProducerBlockedMS, f.Missed)
		if f.HealedMS > 0 {
			noticed := "never reported not ready"
			if f.NoticedMS >= 0 {
				noticed = fmt.Sprintf("not ready after %.0f ms", f.NoticedMS)
			}
			fmt.Printf("  %-50s %s, healed at %.0f ms, every device on the latest stage %.0f ms after the heal\n", "", noticed, f.HealedMS, f.RecoveredAfterHealMS)
		}
	}
}

// devicesOf is the run's population: the --devices override, else the scenario's.
func devicesOf(override, scenario int64) int64 {
	if override > 0 {
		return override
	}
	return scenario
}
