// Command localcluster runs a stagecast fleet on this machine (make cluster):
// Redis Cluster on 7001-7006, broadcaster :9100, proxies :9101-9103, prefetch
// :9111-9112, each a separate process, until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stagecast/stagecast/internal/localcluster"
)

func main() {
	cfg := localcluster.Config{Token: os.Getenv("STAGECAST_PRODUCER_TOKEN"), Out: os.Stdout}
	flag.StringVar(&cfg.Stagecast, "stagecast", "bin/stagecast", "stagecast binary")
	flag.StringVar(&cfg.Dir, "dir", "", "logs and Redis data (default: a new temp dir)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := localcluster.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}
