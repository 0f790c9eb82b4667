package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/wire"
)

const notifyUsage = `Usage:
  stagecast notify [flags] send --member M [--member M2] [--device D] --type T [--priority P] [--payload JSON] [--dedup-key K] [--ttl 24h]
  stagecast notify [flags] report ID

send stores a notification in each target's inbox and pushes it to their
connected devices; report prints its delivery (sent, acked, pending in inboxes).

Flags:
`

type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, splitAddrs(v)...); return nil }

func runNotify(args []string) error {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), notifyUsage); fs.PrintDefaults() }
	base := fs.String("broadcaster", "http://127.0.0.1:8081", "broadcaster URL")
	token := fs.String("producer-token", "", "producer token")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	asJSON := fs.Bool("json", false, "print the raw JSON reply")
	if err := parse(fs, args); err != nil {
		return err
	}
	rest := positional(fs)
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("missing send or report")
	}
	c := &broadcaster.Client{BaseURL: *base, Token: *token}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	print := func(v any, human func()) error {
		if *asJSON {
			e := json.NewEncoder(os.Stdout)
			e.SetIndent("", "  ")
			return e.Encode(v)
		}
		human()
		return nil
	}
	switch rest[0] {
	case "send":
		sf := flag.NewFlagSet("notify send", flag.ContinueOnError)
		var members, devices multiFlag
		sf.Var(&members, "member", "target member id (repeat or comma-separate)")
		sf.Var(&devices, "device", "target device id (repeat or comma-separate)")
		typ := sf.String("type", "", "notification type, e.g. profile-updated (required)")
		prio := sf.String("priority", "normal", "critical, high, normal or low")
		payload := sf.String("payload", "", "JSON payload")
		dedup := sf.String("dedup-key", "", "a later note with the same key replaces this one in each inbox")
		ttl := sf.Duration("ttl", 0, "how long inboxes keep it (default 7 days, at most 30)")
		idem := sf.String("idempotency-key", "", "Idempotency-Key (a retried send with it stores nothing twice)")
		if err := sf.Parse(rest[1:]); err != nil {
			return err
		}
		req := wire.NotifyRequest{To: wire.NotifyTargets{Members: members, Devices: devices}, Type: *typ,
			Priority: *prio, DedupKey: *dedup, TTLSeconds: int64(ttl.Seconds())}
		if *payload != "" {
			if !json.Valid([]byte(*payload)) {
				return errors.New("--payload is not JSON")
			}
			req.Payload = json.RawMessage(*payload)
		}
		r, err := c.Notify(ctx, req, *idem)
		if err != nil {
			return err
		}
		return print(r, func() {
			fmt.Printf("notification %s (%s): %d members, %d devices; stored in %d inboxes, pushed to %d proxy registrations\n",
				r.ID, r.Priority, r.Members, r.Devices, r.Stored, r.Pushes)
		})
	case "report":
		if len(rest) != 2 {
			return errors.New("usage: stagecast notify report ID")
		}
		r, err := c.NoteReport(ctx, rest[1])
		if err != nil {
			return err
		}
		return print(r, func() {
			fmt.Printf("notification %s  type %s  priority %s  created %s\n", r.ID, r.Type, r.Priority, time.UnixMilli(r.CreatedMS).Format(time.RFC3339))
			fmt.Printf("  targets   %d members, %d devices\n", r.Members, r.Devices)
			fmt.Printf("  sent      %d note frames written to devices\n", r.Sent)
			fmt.Printf("  acked     %d\n", r.Acked)
			fmt.Printf("  inboxes   %d pending (unread), %d read, %d gone (expired or replaced)\n", r.Pending, r.Read, r.Gone)
		})
	}
	fs.Usage()
	return fmt.Errorf("unknown notify command %q", rest[0])
}
