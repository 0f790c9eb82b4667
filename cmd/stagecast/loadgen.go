package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/stagecast/stagecast/loadgen"
)

const loadgenUsage = `Usage:
  stagecast loadgen simulate --scenario FILE [--devices N] [--proxies P] [--no-jitter] [--out DIR]
      the scenario at full scale without sockets; writes DIR/report.json and DIR/report.html
  stagecast loadgen live --scenario FILE [--devices N] [--time-scale X] [--token T] [--out DIR]
      real devices (WebSocket + GraphQL prefetch) against a deployment; defaults point at make run
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
	out := fs.String("out", "", "write report.json and report.html here")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *scenario == "" {
		return errors.New("--scenario is required")
	}
	sc, err := loadgen.LoadScenario(*scenario)
	if err != nil {
		return err
	}
	r := loadgen.Simulate(sc, o)
	fmt.Println(r.Headline)
	fmt.Printf("prefetch: %d requests, peak %.0f/s, mean %.0f/s, refresh peak %.0f/s", r.Prefetch.Requests, r.Prefetch.PeakRPS, r.Prefetch.MeanRPS, r.Prefetch.RefreshPeakRPS)
	if r.NoJitter != nil {
		fmt.Printf("; without jitter refreshes would peak at %.0f/s (%.1fx)", r.NoJitter.RefreshPeakRPS, r.NoJitter.Ratio)
	}
	fmt.Printf("\nbroadcasts:\n")
	for _, b := range r.Broadcasts {
		fmt.Printf("  v%-3d %-16s at %6.0fs  %10d devices  50%% %7.0f ms  99%% %7.0f ms  100%% %7.0f ms  missed %d\n", b.V, b.Stage, b.AtS, b.Devices, b.T50MS, b.T99MS, b.T100MS, b.Missed)
	}
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
	if err := parse(fs, args); err != nil {
		return err
	}
	if *scenario == "" {
		return errors.New("--scenario is required")
	}
	sc, err := loadgen.LoadScenario(*scenario)
	if err != nil {
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
	cfg.Log = os.Stdout
	ctx, stop := signalContext()
	defer stop()
	fmt.Printf("%s: %d devices, %v of scenario in %.0f s (time scale %.0fx)\n", sc.Name, max(cfg.Devices, sc.Devices), sc.Duration.D(), sc.Duration.D().Seconds()/cfg.TimeScale, cfg.TimeScale)
	r, err := loadgen.Live(ctx, sc, cfg)
	if err != nil {
		return err
	}
	fmt.Println(r.Headline)
	for _, b := range r.Broadcasts {
		fmt.Printf("  v%-3d %-16s 50%% %6.0f ms  99%% %6.0f ms  100%% %6.0f ms  missed %d\n", b.V, b.Stage, b.T50MS, b.T99MS, b.T100MS, b.Missed)
	}
	fmt.Printf("prefetch: %d requests, peak %.0f/s, %d errors; %d errors in all\n", r.Prefetch.Requests, r.Prefetch.PeakRPS, r.Prefetch.Errors, r.Errors)
	if *out != "" {
		if err := r.Write(*out); err != nil {
			return err
		}
		fmt.Printf("report: %s/report.json, %s/report.html\n", *out, *out)
	}
	return nil
}
