// Command notifybench measures notifications on loopback (make bench-notify).
// It plays two roles: the coordinator (default) and "clients".
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stagecast/stagecast/internal/notifybench"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "notifybench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if len(args) > 0 && args[0] == "clients" {
		fs := flag.NewFlagSet("clients", flag.ExitOnError)
		var c notifybench.ClientConfig
		urls := fs.String("urls", "", "proxies' ws URLs, comma-separated")
		fs.IntVar(&c.From, "from", 0, "first device index")
		fs.IntVar(&c.N, "n", 1000, "devices")
		fs.StringVar(&c.KeyPath, "key", "", "device signing key")
		_ = fs.Parse(args[1:])
		c.URLs = strings.Split(*urls, ",")
		return notifybench.RunClients(ctx, c)
	}
	fs := flag.NewFlagSet("notifybench", flag.ExitOnError)
	var cfg notifybench.Config
	fs.StringVar(&cfg.Stagecast, "stagecast", "bin/stagecast", "stagecast binary")
	fs.StringVar(&cfg.OutDir, "out", "out/bench/notify", "output directory (logs, results.json)")
	d := notifybench.DefaultConfig() // the defaults, typed once
	fs.IntVar(&cfg.Devices, "devices", d.Devices, "online devices (two per member)")
	fs.IntVar(&cfg.PerClient, "per-client", d.PerClient, "devices per client process")
	rates := fs.String("rates", "2000,5000,10000,15000", "steady rates to try, notes/s, in order (stops at the first that fails)")
	fs.DurationVar(&cfg.Duration, "duration", d.Duration, "time per rate")
	fs.DurationVar(&cfg.P99Budget, "p99", d.P99Budget, "p99 budget from POST to device")
	fs.IntVar(&cfg.Flood, "flood", d.Flood, "low notes flooded while critical ones go out")
	fs.IntVar(&cfg.Batch, "batch", 0, "send the steady rates' notes in batches of up to this many (POST /v1/notifications:batch); 0: one per request")
	fs.IntVar(&cfg.FloodBatch, "flood-batch", 0, "send the flood's low notes in batches of up to this many; 0: one per request")
	fs.IntVar(&cfg.Critical, "critical-rate", d.Critical, "critical notes/s in the priority phase")
	fs.StringVar(&cfg.Pprof, "pprof", "", "profile the broadcaster during the first rate (its --debug-addr, e.g. 127.0.0.1:6061)")
	_ = fs.Parse(args)
	for _, s := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("--rates: %q is not a positive integer", s)
		}
		cfg.Rates = append(cfg.Rates, n)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Self, cfg.Log = self, os.Stdout
	res, err := notifybench.Run(ctx, cfg)
	if b, jerr := json.MarshalIndent(res, "", "  "); jerr == nil {
		_ = os.WriteFile(filepath.Join(cfg.OutDir, "results.json"), b, 0o644)
	}
	return err
}
