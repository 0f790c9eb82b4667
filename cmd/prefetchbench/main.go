// Command prefetchbench measures the prefetch API on cache hits: plain JSON,
// GraphQL POST and GraphQL GET side by side (make bench-prefetch).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/stagecast/stagecast/internal/prefetchbench"
)

func main() {
	var cfg prefetchbench.Config
	flag.StringVar(&cfg.Stagecast, "stagecast", "bin/stagecast", "stagecast binary")
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Second, "per endpoint")
	flag.IntVar(&cfg.Concurrency, "c", 16, "concurrent closed-loop clients")
	flag.IntVar(&cfg.Stages, "stages", 12, "stages in the map")
	flag.IntVar(&cfg.PayloadSize, "payload", 300, "bytes per payload")
	flag.StringVar(&cfg.DebugAddr, "pprof", "", "server --debug-addr, to profile it during the run")
	flag.BoolVar(&cfg.Analytics, "analytics", false, "stream the server's lookup counts to an in-process Kafka-protocol broker during the run (docs/analytics.md)")
	out := flag.String("out", "out/bench", "directory for prefetch.json")
	flag.Parse()
	cfg.Log = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := prefetchbench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "prefetchbench:", err)
		os.Exit(1)
	}
	_ = os.MkdirAll(*out, 0o755)
	b, _ := json.MarshalIndent(res, "", "  ")
	_ = os.WriteFile(filepath.Join(*out, "prefetch.json"), b, 0o644)
}
