// Command fanoutbench measures stagecast's fanout on loopback (make bench-fanout).
// It plays three roles: the coordinator (default), "clients" and "floor-server".
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

	"github.com/stagecast/stagecast/internal/fanoutbench"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fanoutbench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if len(args) > 0 && args[0] == "clients" {
		fs := flag.NewFlagSet("clients", flag.ExitOnError)
		var c fanoutbench.ClientConfig
		fs.StringVar(&c.URL, "url", "", "proxy ws URL or raw host:port")
		fs.BoolVar(&c.Raw, "raw", false, "raw TCP")
		fs.BoolVar(&c.Coder, "coder", false, "coder/websocket clients instead of the minimal reader")
		fs.IntVar(&c.N, "n", 1000, "connections")
		fs.StringVar(&c.Src, "src", "127.0.0.1", "source IP")
		fs.StringVar(&c.Event, "event", "bench", "event")
		_ = fs.Parse(args[1:])
		return fanoutbench.RunClients(ctx, c)
	}
	if len(args) > 0 && args[0] == "floor-server" {
		fs := flag.NewFlagSet("floor-server", flag.ExitOnError)
		addr := fs.String("addr", "127.0.0.1:0", "listen address")
		n := fs.Int("n", 1000, "connections to accept")
		_ = fs.Parse(args[1:])
		return fanoutbench.RunFloorServer(*addr, *n, "bench")
	}
	fs := flag.NewFlagSet("fanoutbench", flag.ExitOnError)
	stagecast := fs.String("stagecast", "bin/stagecast", "stagecast binary")
	out := fs.String("out", "out/bench", "output directory (logs, results.json)")
	broadcasts := fs.Int("broadcasts", 20, "broadcasts per scenario")
	perClient := fs.Int("per-client", 10000, "connections per client process")
	scen := fs.String("scenarios", "1x10000,1x19000,3x45000", "PROXIESxDEVICES,...")
	floor := fs.Bool("floor", true, "also measure the raw-TCP floor")
	coder := fs.Bool("coder-clients", false, "clients use coder/websocket instead of the minimal WebSocket reader")
	analyticsOn := fs.Bool("analytics", false, "run a Kafka-protocol broker (stagecast kafka-dev) and stream the proxies' analytics to it")
	killKafka := fs.Int("kill-kafka-after", 0, "with --analytics: kill the broker after this many broadcasts (0: never)")
	sample := fs.Float64("device-sample", -1, "with --analytics: the proxies' --analytics-device-sample (negative: their default, 1 %)")
	pprofAddr := fs.String("pprof", "", "profile proxy 0 during the broadcasts (its --debug-addr, e.g. 127.0.0.1:6060)")
	_ = fs.Parse(args)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := fanoutbench.Config{Stagecast: *stagecast, Self: self, OutDir: *out, Broadcasts: *broadcasts, PerClient: *perClient, Floor: *floor, PprofAddr: *pprofAddr, CoderClients: *coder, Log: os.Stdout,
		Analytics: *analyticsOn, KillKafkaAfter: *killKafka, DeviceSample: *sample}
	for _, s := range strings.Split(*scen, ",") {
		p, d, ok := strings.Cut(s, "x")
		np, err1 := strconv.Atoi(p)
		nd, err2 := strconv.Atoi(d)
		if !ok || err1 != nil || err2 != nil || np < 1 || nd < np {
			return fmt.Errorf("scenario %q: want PROXIESxDEVICES", s)
		}
		cfg.Scenarios = append(cfg.Scenarios, fanoutbench.Scenario{Name: s, Proxies: np, Devices: nd})
	}
	res, err := fanoutbench.Run(ctx, cfg)
	if b, jerr := json.MarshalIndent(res, "", "  "); jerr == nil {
		_ = os.WriteFile(filepath.Join(*out, "results.json"), b, 0o644)
	}
	return err
}
