package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/wire"
)

const stageUsage = `Usage:
  stagecast stage [flags] set EVENT STAGE     change the stage (prints the new version)
  stagecast stage [flags] get EVENT           current stage and version
  stagecast stage [flags] report EVENT [V]    delivery report of version V (default: current)
  stagecast stage [flags] map put EVENT FILE  store the stage map in FILE (JSON; - for stdin)
  stagecast stage [flags] map get EVENT       print the stored stage map
  stagecast stage [flags] live EVENT on|off   the event window: its prefetch is shed last

The token comes from --producer-token or STAGECAST_PRODUCER_TOKEN.
`

func runStage(args []string) error {
	fs := flag.NewFlagSet("stage", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), stageUsage); fs.PrintDefaults() }
	base := fs.String("broadcaster", "http://127.0.0.1:8081", "broadcaster URL")
	token := fs.String("producer-token", "", "producer token")
	idem := fs.String("idempotency-key", "", "Idempotency-Key for set (default: a fresh key, so a retried call is safe)")
	platforms := fs.String("platforms", "", "set: deliver only to these platforms (comma-separated)")
	segments := fs.String("segments", "", "set: deliver only to these segments (comma-separated)")
	asJSON := fs.Bool("json", false, "print the raw JSON reply")
	htmlOut := fs.String("html", "", "report: also write the delivery report as one HTML page (charts inline) to this file")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	if err := parse(fs, args); err != nil {
		return err
	}
	rest := positional(fs)
	if len(rest) < 2 {
		fs.Usage()
		return errors.New("missing command or event")
	}
	c := &producer.Client{BaseURL: *base, Token: *token}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	out := printer(*asJSON)
	switch cmd, event := rest[0], rest[1]; cmd {
	case "set":
		if len(rest) != 3 {
			return errors.New("usage: stage set EVENT STAGE")
		}
		var target *producer.Target
		if *platforms != "" || *segments != "" {
			target = &producer.Target{Platforms: splitAddrs(*platforms), Segments: splitAddrs(*segments)}
		}
		key := *idem
		if key == "" {
			key = "cli-" + randomToken()[4:]
		}
		r, err := c.SetStage(ctx, event, rest[2], target, key)
		if err != nil {
			return err
		}
		return out(r, func() {
			fmt.Printf("%s is now on %s (v%d at %s)\n", r.Event, r.Stage, r.V, time.UnixMilli(r.TS).UTC().Format(time.RFC3339Nano))
		})
	case "get":
		r, err := c.Get(ctx, event)
		if err != nil {
			return err
		}
		return out(r, func() {
			fmt.Printf("%s: %s (v%d, since %s)\n", r.Event, r.Stage, r.V, time.UnixMilli(r.TS).UTC().Format(time.RFC3339Nano))
		})
	case "report":
		var v uint64
		if len(rest) == 3 {
			n, err := strconv.ParseUint(rest[2], 10, 64)
			if err != nil {
				return fmt.Errorf("version %q: %w", rest[2], err)
			}
			v = n
		}
		r, err := c.Report(ctx, event, v)
		if err != nil {
			return err
		}
		if *htmlOut != "" {
			f, err := os.Create(*htmlOut)
			if err != nil {
				return err
			}
			if err := broadcaster.WriteReportHTML(f, r); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "wrote %s\n", *htmlOut)
		}
		return out(r, func() { printReport(r) })
	case "map":
		return runMap(ctx, c, rest[1:], *asJSON)
	case "live":
		if len(rest) != 3 || (rest[2] != "on" && rest[2] != "off") {
			return errors.New("usage: stage live EVENT on|off")
		}
		if err := c.SetLive(ctx, event, rest[2] == "on"); err != nil {
			return err
		}
		fmt.Printf("%s event window is %s\n", event, rest[2])
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("unknown stage command %q", cmd)
	}
}

func runMap(ctx context.Context, c *producer.Client, args []string, asJSON bool) error {
	switch {
	case len(args) == 3 && args[0] == "put":
		var raw []byte
		var err error
		if args[2] == "-" {
			raw, err = io.ReadAll(os.Stdin)
		} else {
			raw, err = os.ReadFile(args[2])
		}
		if err != nil {
			return err
		}
		if _, err := wire.ParseStageMap(raw); err != nil { // say what is wrong before the round trip
			return fmt.Errorf("%s: %w", args[2], err)
		}
		r, err := c.PutStageMap(ctx, args[1], raw)
		if err != nil {
			return err
		}
		fmt.Printf("%s stage map v%d stored: %d stages, %d bytes\n", r.Event, r.Version, r.Stages, r.Bytes)
		return nil
	case len(args) == 2 && args[0] == "get":
		m, err := c.GetStageMap(ctx, args[1])
		if err != nil {
			return err
		}
		if !asJSON {
			fmt.Fprintf(os.Stderr, "%s stage map v%d, updated %s\n", m.Event, m.Version, time.UnixMilli(m.UpdatedMS).UTC().Format(time.RFC3339))
		}
		_, err = os.Stdout.Write(append(m.Map, '\n'))
		return err
	}
	return errors.New("usage: stage map put EVENT FILE | stage map get EVENT")
}

func printReport(r broadcaster.Report) {
	ms := func(p *int64) string {
		if p == nil {
			return "not reached"
		}
		return (time.Duration(*p) * time.Millisecond).String()
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "event\t%s\n", r.Event)
	fmt.Fprintf(w, "version\tv%d %s\n", r.V, r.Stage)
	fmt.Fprintf(w, "devices connected\t%d (%d proxies reporting, %d stale)\n", r.Devices, r.Proxies-r.StaleProxies, r.StaleProxies)
	fmt.Fprintf(w, "sent\t%d (%.1f%%)\n", r.Sent, r.SentPct)
	fmt.Fprintf(w, "acked\t%d (%.1f%%)\n", r.Acked, r.AckedPct)
	fmt.Fprintf(w, "time to 50/90/99/100%% sent\t%s\n", strings.Join([]string{ms(r.SentMS["p50"]), ms(r.SentMS["p90"]), ms(r.SentMS["p99"]), ms(r.SentMS["p100"])}, " / "))
	w.Flush()
}

func runWatch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	proxyURL := fs.String("proxy", "ws://127.0.0.1:8080/v1/ws", "proxy URL(s), comma-separated")
	platform := fs.String("platform", "tv", "device platform")
	segment := fs.String("segment", "", "device segment")
	token := fs.String("device-token", "", "device token (a JWT from stagecast token mint), sent as Authorization: Bearer to the proxy and the prefetch API")
	gqlURL := fs.String("graphql", "", "prefetch API URL (e.g. http://127.0.0.1:8082/graphql): prefetch the stage map and show each stage's payload")
	deviceID := fs.String("device", "", "device id (default: random; a device token's sub overrides it); notes to it show where the deployment trusts device ids (make run does)")
	notes := fs.Bool("notes", true, "resume the device's inboxes and print notifications (with --device-token and --graphql, pull the inbox first)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(positional(fs)) != 1 {
		return errors.New("usage: stagecast watch [flags] EVENT")
	}
	event := positional(fs)[0]
	if err := wire.CheckID("event", event); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	if *deviceID == "" {
		*deviceID = "watch-" + randomToken()[4:12]
	}
	var pf *device.Prefetcher
	if *gqlURL != "" {
		var err error
		pf, err = device.NewPrefetcher(device.PrefetchConfig{URL: *gqlURL, Event: event, Segment: *segment, Critical: true, Token: *token, DeviceID: *deviceID})
		if err != nil {
			return err
		}
		go func() { _ = pf.Run(ctx) }()
	}
	inboxURL := ""
	if *notes && *token != "" {
		inboxURL = *gqlURL
	}
	d, err := device.New(device.Config{URLs: splitAddrs(*proxyURL), Device: *deviceID, Platform: *platform,
		Segment: *segment, Token: *token, Events: map[string]uint64{event: 0}, Ack: true,
		Notes: *notes, InboxURL: inboxURL, AckNotes: true,
		OnNote: func(f wire.ProxyFrame, at time.Time) {
			fmt.Printf("%s  note %s [%s] %s %s (id %s)\n", at.Format("15:04:05.000"), f.Type, f.Priority, f.Payload, f.NID, f.ID)
		},
		OnStage: func(f wire.ProxyFrame, at time.Time) {
			fmt.Printf("%s  %s -> %s (v%d, %v after the change)\n", at.Format("15:04:05.000"), f.Event, f.Key, f.V, at.Sub(time.UnixMilli(f.TS)).Round(time.Millisecond))
			if pf != nil {
				payload, ok, refetch := pf.OnStageDigest(ctx, f.Key, f.D)
				switch {
				case ok && refetch < 0:
					fmt.Printf("              showing (prefetched): %s\n", payload)
				case ok:
					fmt.Printf("              showing (prefetched, changed since: refetching in %v, this device's slot): %s\n", refetch.Round(time.Millisecond), payload)
				default:
					fmt.Printf("              %s is not in the prefetched map: fetching it once, in %v\n", f.Key, refetch.Round(time.Millisecond))
				}
			}
		},
		OnFrame: func(f wire.ProxyFrame) {
			switch f.Op {
			case wire.OpReconnect:
				fmt.Printf("proxy is draining: reconnecting in %dms\n", f.AfterMS)
			case wire.OpError:
				fmt.Printf("error from proxy: %s: %s\n", f.Code, f.Msg)
			}
		}})
	if err != nil {
		return err
	}
	fmt.Printf("watching %s on %s as %s device %s (Ctrl-C to stop)\n", event, *proxyURL, *platform, *deviceID)
	if err := d.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// printer prints a reply as indented JSON (--json) or through human.
func printer(asJSON bool) func(v any, human func()) error {
	return func(v any, human func()) error {
		if asJSON {
			e := json.NewEncoder(os.Stdout)
			e.SetIndent("", "  ")
			return e.Encode(v)
		}
		human()
		return nil
	}
}
