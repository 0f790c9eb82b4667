// Command stagecast is the one binary of stagecast: servers (dev, proxy,
// broadcaster), the producer CLI (stage) and a watching device (watch).
// Each subcommand parses its flags, builds configs, and hands off to packages.
package main

import (
	"fmt"
	"os"
)

const usage = `stagecast keeps millions of devices in sync during live events.

Usage: stagecast <command> [flags]

Servers:
  dev           all-in-one dev server: in-memory engine, proxy :8080, broadcaster :8081, prefetch :8082
  proxy         WebSocket proxy (devices), on Redis
  broadcaster   producer API, on Redis
  prefetch      prefetch API (GraphQL), on Redis
Tools:
  stage         producer CLI: stage set|get|report|map|live
  notify        producer CLI: notify send (to members/devices), notify report ID
  watch         connect as a device and print every stage and notification
  prefetch-get  prefetch an event's stage map as a device would and print it
  loadgen       game-day rehearsal: loadgen simulate (full scale, no sockets)
  token         device identity: token keygen (Ed25519 key pair), token mint (a device JWT)
  fleet         control a local fleet (make cluster): list members, kill/drain/pause one, inject faults
  analytics     the analytics stream: analytics tail (per-version convergence from Kafka, and the audit trail)
  kafka-dev     an in-memory Kafka-protocol broker (kfake) for local fleets and benchmarks

Every flag can also be set as STAGECAST_<FLAG> (upper case, - as _).
Run 'stagecast <command> -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"dev":          runDev,
		"proxy":        runProxy,
		"broadcaster":  runBroadcaster,
		"stage":        runStage,
		"watch":        runWatch,
		"notify":       runNotify,
		"prefetch":     runPrefetch,
		"prefetch-get": runPrefetchGet,
		"loadgen":      runLoadgen,
		"token":        runToken,
		"fleet":        runFleet,
		"analytics":    runAnalytics,
		"kafka-dev":    runKafkaDev,
	}
	name, args := os.Args[1], os.Args[2:]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Print(usage)
		return
	}
	run, ok := cmds[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "stagecast: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	if err := run(args); err != nil {
		fmt.Fprintf(os.Stderr, "stagecast %s: %v\n", name, err)
		os.Exit(1)
	}
}
