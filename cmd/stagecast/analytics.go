package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/proxy"
)

// kafkaOpts are the analytics stream's flags (proxy, broadcaster; off unless
// --kafka-brokers is set).
type kafkaOpts struct {
	brokers, prefix            string
	tls, tlsInsecure           bool
	tlsCA, tlsServerName       string
	tlsCert, tlsKey            string
	saslMechanism, saslUser    string
	saslPassword, saslPassFile string
	maxRecords, maxBytes       int
	deviceSample               float64
}

func kafkaFlags(fs *flag.FlagSet) *kafkaOpts {
	o := &kafkaOpts{}
	fs.StringVar(&o.brokers, "kafka-brokers", "", "analytics stream: Kafka brokers, comma-separated (docs/analytics.md); empty: off")
	ad := analytics.DefaultConfig() // the defaults, typed once
	fs.StringVar(&o.prefix, "kafka-topic-prefix", ad.TopicPrefix, "analytics topics are <prefix>audit, delivery, devices, connections, notes and prefetch")
	fs.BoolVar(&o.tls, "kafka-tls", false, "connect to Kafka over TLS")
	fs.StringVar(&o.tlsCA, "kafka-tls-ca", "", "PEM file of the CA(s) that sign the brokers' certificates (default: the system pool)")
	fs.StringVar(&o.tlsServerName, "kafka-tls-server-name", "", "name to verify in the brokers' certificates")
	fs.StringVar(&o.tlsCert, "kafka-tls-cert", "", "client certificate (PEM) for mutual TLS")
	fs.StringVar(&o.tlsKey, "kafka-tls-key", "", "client key (PEM) for mutual TLS")
	fs.BoolVar(&o.tlsInsecure, "kafka-tls-insecure-skip-verify", false, "do not verify the brokers' certificates (tests only)")
	fs.StringVar(&o.saslMechanism, "kafka-sasl-mechanism", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: none")
	fs.StringVar(&o.saslUser, "kafka-sasl-user", "", "SASL user")
	fs.StringVar(&o.saslPassword, "kafka-sasl-password", "", "SASL password (prefer --kafka-sasl-password-file: flags show in ps)")
	fs.StringVar(&o.saslPassFile, "kafka-sasl-password-file", "", "read the SASL password from this file")
	fs.IntVar(&o.maxRecords, "kafka-max-buffered-records", ad.MaxBufferedRecords, "records waiting for the brokers at most; past it they are dropped and counted")
	fs.IntVar(&o.maxBytes, "kafka-max-buffered-bytes", ad.MaxBufferedBytes, "bytes waiting for the brokers at most; past it records are dropped and counted")
	fs.Float64Var(&o.deviceSample, "analytics-device-sample", analytics.DefaultDeviceSample, "share of devices (0 to 1, by a hash of the device id: the same on every proxy) whose connect, stages, acks and disconnect are streamed one by one")
	return o
}

// producer starts the analytics producer of a server (nil: analytics off).
func (o *kafkaOpts) producer(source string, reg prometheus.Registerer, log *slog.Logger) (*analytics.Producer, error) {
	if o.brokers == "" {
		return nil, nil
	}
	cfg := analytics.Config{Brokers: splitAddrs(o.brokers), TopicPrefix: o.prefix, Source: source, Registerer: reg, Logger: log,
		SASLMechanism: strings.ToUpper(o.saslMechanism), SASLUser: o.saslUser, SASLPassword: o.saslPassword,
		MaxBufferedRecords: o.maxRecords, MaxBufferedBytes: o.maxBytes}
	if o.saslPassFile != "" {
		b, err := os.ReadFile(o.saslPassFile)
		if err != nil {
			return nil, fmt.Errorf("--kafka-sasl-password-file: %w", err)
		}
		cfg.SASLPassword = strings.TrimSpace(string(b))
	}
	if o.tls {
		tc, err := buildTLS("kafka", o.tlsCA, o.tlsServerName, o.tlsCert, o.tlsKey, o.tlsInsecure)
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	} else if o.tlsCA != "" || o.tlsCert != "" || o.tlsServerName != "" || o.tlsInsecure {
		return nil, errors.New("--kafka-tls-* options need --kafka-tls")
	}
	p, err := analytics.New(cfg)
	if err != nil {
		return nil, err
	}
	log.Info("analytics stream on", "brokers", o.brokers, "topics", cmp.Or(o.prefix, analytics.DefaultConfig().TopicPrefix)+"{audit,delivery,devices,connections,notes,prefetch}", "source", source)
	return p, nil
}

// devKafka starts the dev server's in-process Kafka-protocol broker (kfake: a
// real Kafka wire-protocol server, nothing persisted) and returns its address.
func devKafka(addr string) (*kfake.Cluster, string, error) {
	port := 0
	if _, p, ok := strings.Cut(addr, ":"); ok {
		if _, err := fmt.Sscan(p, &port); err != nil {
			return nil, "", fmt.Errorf("--kafka-addr %q: %w", addr, err)
		}
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.AllowAutoTopicCreation(),
		kfake.SeedTopics(1, analytics.Topics("stagecast.")...))
	if err != nil {
		return nil, "", fmt.Errorf("dev kafka: %w", err)
	}
	return c, c.ListenAddrs()[0], nil
}

func runAnalytics(args []string) error {
	if len(args) == 0 || args[0] != "tail" {
		return errors.New("usage: stagecast analytics tail [--kafka-brokers ADDRS] [--event E] [--once]")
	}
	fs := flag.NewFlagSet("analytics tail", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", "127.0.0.1:9092", "Kafka brokers, comma-separated (make run prints its own)")
	prefix := fs.String("kafka-topic-prefix", analytics.DefaultConfig().TopicPrefix, "topic prefix")
	event := fs.String("event", "", "only this event")
	once := fs.Bool("once", false, "print once, when the topics are read up to now, and exit")
	asJSON := fs.Bool("json", false, "print each table as JSON lines (one convergence per line)")
	every := fs.Duration("every", 2*time.Second, "how often the table is printed")
	audit := fs.Bool("audit", true, "print audit records (stage changes, schedules, maps, notifications) as they come")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	m := analytics.NewMerger()
	recs := make(chan [2][]byte, 1024)
	go func() {
		err := analytics.Consume(ctx, splitAddrs(*brokers), *prefix, func(topic string, value []byte) {
			recs <- [2][]byte{[]byte(topic), value}
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "stagecast analytics:", err)
			stop()
		}
	}()
	tick := time.NewTicker(*every)
	defer tick.Stop()
	quiet := time.NewTimer(3 * time.Second) // --once: caught up when nothing came for a while
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-recs:
			if string(r[0]) == analytics.TopicAudit {
				if *audit && !*asJSON {
					printAudit(os.Stdout, r[1], *event)
				}
				continue
			}
			if err := m.Add(r[1]); err != nil {
				fmt.Fprintln(os.Stderr, "stagecast analytics: skipping a record:", err)
			}
			if !quiet.Stop() {
				select {
				case <-quiet.C:
				default:
				}
			}
			quiet.Reset(time.Second)
		case <-tick.C:
			if !*once {
				printTail(os.Stdout, m, *event, *asJSON)
			}
		case <-quiet.C:
			if *once {
				printTail(os.Stdout, m, *event, *asJSON)
				return nil
			}
		}
	}
}

func printAudit(w io.Writer, value []byte, event string) {
	var r analytics.Record
	if json.Unmarshal(value, &r) != nil || (event != "" && r.Event != event) {
		return
	}
	b, _ := json.Marshal(r.Data)
	fmt.Fprintf(w, "%s audit %s %s %s\n", time.UnixMilli(r.AtMS).UTC().Format("15:04:05.000"), r.Type, r.Event, b)
}

// printTail prints the convergence table, then the connection and
// notification totals since the tail started.
func printTail(w io.Writer, m *analytics.Merger, event string, asJSON bool) {
	printConvergence(w, m.Versions(event), asJSON)
	t, notes := m.Totals()
	if asJSON {
		_ = json.NewEncoder(w).Encode(map[string]any{"connections": t, "notes": notes})
		return
	}
	if len(t.Connections) > 0 {
		conns := 0
		for _, n := range t.Connections {
			conns += n
		}
		fmt.Fprintf(w, "connections: %d on %d proxies; since the tail started: %d connects, disconnects %s, refused %s\n",
			conns, len(t.Connections), t.Connects, countsString(t.Disconnects), countsString(t.Refused))
	}
	if len(notes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NOTE TYPE\tPRIORITY\tACCEPTED\tMEMBERS\tDEVICES\tPUSHED\tACKED\tPULLED\tEXPIRED")
		for _, n := range notes {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", n.Type, n.Priority, n.Accepted, n.Members, n.Devices, n.Pushed, n.Acked, n.Pulled, n.Expired)
		}
		_ = tw.Flush()
		fmt.Fprintln(w)
	}
}

func countsString(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func printConvergence(w io.Writer, cs []analytics.Convergence, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, c := range cs {
			_ = enc.Encode(c)
		}
		return
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].Event < cs[j].Event })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "EVENT\tV\tPROXIES\tDEVICES\tSENT\tSENT%\tACKED%\tP50\tP99\tCATCH-UPS")
	ms := func(p *int64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf("%dms", *p)
	}
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%s\t%s\t%d\n", c.Event, c.V, c.Proxies, c.Devices, c.Sent, c.SentPct, c.AckedPct,
			ms(c.SentMS["p50"]), ms(c.SentMS["p99"]), c.CatchUps)
		// platform lines (p50/p99 from the coarse per-platform buckets: an
		// upper bound), each with its segments beneath
		for _, p := range sortedKeys(c.Platforms) {
			pc := c.Platforms[p]
			fmt.Fprintf(tw, "  %s\t\t\t%d\t%d\t%.1f\t%.1f\t%s\t%s\t%d\n", p, pc.Devices, pc.Sent, pc.SentPct, pc.AckedPct,
				ms(pc.SentMS["p50"]), ms(pc.SentMS["p99"]), pc.CatchUps)
			for _, k := range sortedKeys(c.Cells) {
				seg, ok := strings.CutPrefix(k, p+"/")
				if !ok || (seg == "" && len(c.Cells) == len(c.Platforms)) {
					continue // no segments: the platform line says it all
				}
				if seg == "" {
					seg = "(none)"
				}
				cc := c.Cells[k]
				fmt.Fprintf(tw, "    %s\t\t\t%d\t%d\t%.1f\t%.1f\t\t\t%d\n", seg, cc.Devices, cc.Sent, cc.SentPct, cc.AckedPct, cc.CatchUps)
			}
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// sink is a late-bound analytics producer: a server takes its hooks before
// the producer exists (the producer's metrics go to the registry the server
// makes in New). Both hooks are no-ops while it is unset or off.
type sink struct {
	p    atomic.Pointer[analytics.Producer]
	exp  atomic.Pointer[analytics.DeliveryExporter]
	act  atomic.Pointer[analytics.Activity]
	stop context.CancelFunc
}

// set starts streaming through p (nil: off); server names this server in
// the activity records.
func (s *sink) set(p *analytics.Producer, server string) {
	s.p.Store(p)
	s.exp.Store(analytics.NewDeliveryExporter(p, nil))
	if p == nil {
		return
	}
	act := analytics.NewActivity(p, server, nil)
	s.act.Store(act)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); act.Run(ctx) }()
	s.stop = func() { cancel(); <-done }
}

// activity takes a proxy's connection and notification counts.
func (s *sink) activity(a proxy.Activity) {
	act := s.act.Load()
	act.Connections(a.Connections, a.Connects, a.Disconnects, a.Refused)
	for k, t := range a.Notes {
		act.Note(analytics.NoteClass{Type: k.Type, Priority: k.Priority}, analytics.Notes{Pushed: t.Pushed, Acked: t.Acked})
	}
}

// note counts a notification the broadcaster stored.
func (s *sink) note(n broadcaster.NoteAccepted) {
	s.act.Load().Stored(analytics.NoteClass{Type: n.Type, Priority: n.Priority}, uint64(n.Members), uint64(n.Devices), uint64(n.Stored), n.Expires)
}

// pulled counts a note a prefetch server's inbox pull returned.
func (s *sink) pulled(noteType, priority string) {
	s.act.Load().Note(analytics.NoteClass{Type: noteType, Priority: priority}, analytics.Notes{Pulled: 1})
}

// hooks wires the sink into a proxy config: delivery reports, activity and
// the device sample at rate.
func (s *sink) hooks(pc *proxy.Config, rate float64) {
	pc.OnReport = s.report
	pc.OnActivity = s.activity
	s.sampling(pc, rate)
}

func (s *sink) audit(event string, a engine.AuditEntry) {
	s.p.Load().Emit(analytics.TopicAudit, a.Action, event, a)
}

func (s *sink) report(r engine.DeliveryReport) { s.exp.Load().Observe(r) }

// sampling wires the device sample into a proxy config (a no-op stream while
// the producer is unset or off).
func (s *sink) sampling(pc *proxy.Config, rate float64) {
	if rate <= 0 {
		return
	}
	pc.SampleDevice = func(device string) bool { return s.p.Load() != nil && analytics.InSample(device, rate) }
	pc.OnDeviceSample = func(d proxy.DeviceSample) {
		s.p.Load().EmitKeyed(analytics.TopicDevices, "device_"+d.Kind, d.Event, d.Device, d)
	}
}

// close emits the last activity counts, then flushes for at most 5 s.
func (s *sink) close() {
	if s.stop != nil {
		s.stop()
	}
	closeProducer(s.p.Load())
}

// closeProducer flushes p for at most 5 s (a broker that is gone cannot hold
// up a shutdown), then closes it.
func closeProducer(p *analytics.Producer) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Close(ctx)
}

// runKafkaDev runs an in-process Kafka-protocol broker (kfake) on its own, for
// local fleets and benchmarks (`make run` starts one inside the dev server).
func runKafkaDev(args []string) error {
	fs := flag.NewFlagSet("kafka-dev", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address (loopback: nothing is persisted, for local use only)")
	if err := parse(fs, args); err != nil {
		return err
	}
	kc, listen, err := devKafka(*addr)
	if err != nil {
		return err
	}
	defer kc.Close()
	fmt.Printf("kafka-dev: Kafka protocol on %s (in memory)\n", listen)
	ctx, stop := signalContext()
	defer stop()
	<-ctx.Done()
	return nil
}
