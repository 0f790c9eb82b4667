// Command localcluster runs a stagecast fleet on this machine (make cluster):
// Redis Cluster on 7001-7006, broadcaster :9100, proxies :9101-9103, prefetch
// :9111-9112, each a separate process, until Ctrl-C; every link between them
// runs through a relay that network faults can break (--links).
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
	restart := flag.Bool("restart", true, "restart a member that exits (with backoff); false: the first exit stops the fleet")
	flag.StringVar(&cfg.ControlAddr, "control-addr", "127.0.0.1:0", "control interface address (loopback; its token is in <dir>/control.json)")
	flag.BoolVar(&cfg.RequireDeviceToken, "require-device-token", false, "make a device-token key pair in --dir and require tokens on the proxies and prefetch servers, as production does (loadgen live --device-key <dir>/device-signing.jwk)")
	flag.BoolVar(&cfg.Links, "links", true, "route each server's way to each Redis node, and the devices' way in, through fault links (partition, delay, ...: stagecast fleet fault partition)")
	flag.Parse()
	cfg.NoRestart = !*restart
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := localcluster.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}
