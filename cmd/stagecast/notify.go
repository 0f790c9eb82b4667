package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
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
	var members, devices multiFlag
	fs.Var(&members, "member", "send: target member id (repeat or comma-separate)")
	fs.Var(&devices, "device", "send: target device id (repeat or comma-separate)")
	typ := fs.String("type", "", "send: notification type, e.g. profile-updated (required)")
	prio := fs.String("priority", "normal", "send: critical, high, normal or low")
	payload := fs.String("payload", "", "send: JSON payload")
	dedup := fs.String("dedup-key", "", "send: a later note with the same key replaces this one in each inbox")
	ttl := fs.Duration("ttl", 0, "send: how long inboxes keep it (default 7 days, at most 30)")
	idem := fs.String("idempotency-key", "", "send: Idempotency-Key (a retried send with it stores nothing twice)")
	if err := parse(fs, args); err != nil {
		return err
	}
	rest := positional(fs)
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("missing send or report")
	}
	c := &producer.Client{BaseURL: *base, Token: *token}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	print := printer(*asJSON)
	switch rest[0] {
	case "send":
		req := producer.NotifyRequest{To: producer.NotifyTargets{Members: members, Devices: devices}, Type: *typ,
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
