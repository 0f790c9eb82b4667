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
  stagecast loadgen live ...
      real devices against a deployment: not built yet (issue 4)
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
		return errors.New("loadgen live is not built yet (issue 4); use loadgen simulate, or make bench-fanout for live load on loopback")
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
