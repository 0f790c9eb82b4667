// Package analytics streams what the servers did to Kafka for the data team:
// the broadcaster's audit trail (every stage change, schedule, map write,
// window and notification accepted) and each proxy's delivery aggregates per
// event and version, in the versioned JSON schema of docs/analytics.md, with
// CloudEvents' Kafka binary-mode headers.
//
// It is never in the way: servers call Emit, which never blocks and never
// waits for Kafka (franz-go's TryProduce); when the buffer (records and bytes,
// both bounded) is full or the brokers are slow or down, records are dropped
// and counted (stagecast_analytics_dropped_total), never queued without bound.
// The producer is idempotent (franz-go's default), batches with a linger and
// compresses; delivery is at-least-once: consumers drop duplicates by ce_id.
//
// Concurrency: a Producer is safe for concurrent use; Emit may be called from
// any goroutine.
package analytics

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// SchemaVersion is the version of every record's schema (docs/analytics.md).
const SchemaVersion = 1

// Topics (after Config.TopicPrefix).
const (
	TopicAudit    = "audit"    // the broadcaster's audit trail
	TopicDelivery = "delivery" // proxies' delivery aggregates
	TopicDevices  = "devices"  // the sampled devices' events (keyed by device)
)

// DefaultDeviceSample is the share of devices whose own events are streamed.
const DefaultDeviceSample = 0.01

// InSample reports whether device is in a sample of rate (0 to 1): FNV-1a of
// the id modulo 10,000 below rate x 10,000. It depends on the id only, so a
// sampled device is sampled on every proxy, on every reconnect.
func InSample(device string, rate float64) bool {
	if rate <= 0 || device == "" {
		return false
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(device))
	return float64(h.Sum32()%10000) < rate*10000
}

// Config configures a Producer. Zero values take DefaultConfig's.
type Config struct {
	// Brokers to bootstrap from. Required (an empty list: analytics off, New
	// returns nil).
	Brokers []string
	// TopicPrefix is put before each topic name. Default "stagecast.".
	TopicPrefix string
	// Source names this server in each record (CloudEvents ce_source), e.g.
	// "proxy/proxy-1". Required.
	Source string
	// TLS, when set, dials the brokers with it.
	TLS *tls.Config
	// SASL: Mechanism "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512" with User
	// and Password; "" is none.
	SASLMechanism, SASLUser, SASLPassword string
	// MaxBufferedRecords and MaxBufferedBytes bound what waits for the brokers;
	// past either, records are dropped. Defaults 10,000 and 16 MiB.
	MaxBufferedRecords int
	MaxBufferedBytes   int
	// Linger batches records for this long. Default 100ms.
	Linger time.Duration
	// DeliveryTimeout: a record not acknowledged by then is dropped. Default 10s.
	DeliveryTimeout time.Duration
	Registerer      prometheus.Registerer
	Logger          *slog.Logger
	Now             func() time.Time
}

// DefaultConfig returns the producer's documented defaults (no brokers, no
// source: those are the caller's). New fills each zero field of its Config
// from it (package defaults), then validates.
func DefaultConfig() Config {
	return Config{TopicPrefix: "stagecast.", MaxBufferedRecords: 10000, MaxBufferedBytes: 16 << 20,
		Linger: 100 * time.Millisecond, DeliveryTimeout: 10 * time.Second, Logger: slog.Default(), Now: time.Now}
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing.
func (c *Config) Validate() error {
	if c.Source == "" {
		return errors.New("analytics: Source is required")
	}
	if c.MaxBufferedRecords <= 0 || c.MaxBufferedBytes <= 0 || c.Linger <= 0 || c.DeliveryTimeout <= 0 {
		return fmt.Errorf("analytics: MaxBufferedRecords %d, MaxBufferedBytes %d, Linger %v and DeliveryTimeout %v must be > 0",
			c.MaxBufferedRecords, c.MaxBufferedBytes, c.Linger, c.DeliveryTimeout)
	}
	switch c.SASLMechanism {
	case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		return fmt.Errorf("analytics: SASL mechanism %q: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASLMechanism)
	}
	if c.Logger == nil || c.Now == nil {
		return errors.New("analytics: Logger and Now must be set (New fills them)")
	}
	return nil
}

// Producer emits records to Kafka without ever blocking its caller.
type Producer struct {
	cfg     Config
	cl      *kgo.Client
	nonce   string
	seq     atomic.Uint64
	sent    prometheus.Counter
	dropped *prometheus.CounterVec
	emitted prometheus.Counter
}

// New returns a Producer, or nil (analytics off) when cfg has no brokers.
func New(cfg Config) (*Producer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, nil
	}
	defaults.Fill(&cfg, DefaultConfig())
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID("stagecast-" + cfg.Source),
		kgo.ProducerLinger(cfg.Linger),
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		kgo.MaxBufferedBytes(cfg.MaxBufferedBytes),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		kgo.ProducerBatchCompression(kgo.ZstdCompression(), kgo.Lz4Compression(), kgo.NoCompression()),
		kgo.AllowAutoTopicCreation(),
	}
	if cfg.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(cfg.TLS))
	}
	switch cfg.SASLMechanism {
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: cfg.SASLUser, Pass: cfg.SASLPassword}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: cfg.SASLUser, Pass: cfg.SASLPassword}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: cfg.SASLUser, Pass: cfg.SASLPassword}.AsSha512Mechanism()))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("analytics: %w", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	p := &Producer{cfg: cfg, cl: cl, nonce: hex.EncodeToString(b[:]),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "analytics", Name: "records_sent_total",
			Help: "Analytics records the brokers acknowledged."}),
		emitted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "analytics", Name: "records_emitted_total",
			Help: "Analytics records offered to the producer."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "analytics", Name: "dropped_total",
			Help: "Analytics records dropped, by reason: buffer_full (Kafka slow or down: the buffer is bounded), failed (not delivered within the delivery timeout), encode."}, []string{"reason"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.sent, p.emitted, p.dropped)
	}
	return p, nil
}

// Record is one record's value: the envelope every topic shares plus the
// type's fields (docs/analytics.md).
type Record struct {
	Schema int    `json:"schema"`
	Type   string `json:"type"`
	Source string `json:"source"`
	AtMS   int64  `json:"at"`
	ID     string `json:"id"` // as ce_id: unique per record; consumers drop duplicates by it
	Event  string `json:"event,omitempty"`
	Data   any    `json:"data"`
}

// Emit offers one record of type typ (e.g. "stage_change") about event to
// topic; it never blocks. key is the record key (the event, so one event's
// records land in one partition); data is the type's fields.
func (p *Producer) Emit(topic, typ, event string, data any) {
	p.EmitKeyed(topic, typ, event, event, data)
}

// EmitKeyed is Emit with another record key than the event (device samples
// are keyed by device, so one device's events stay in order).
func (p *Producer) EmitKeyed(topic, typ, event, key string, data any) {
	if p == nil {
		return
	}
	p.emitted.Inc()
	now := p.cfg.Now()
	id := p.cfg.Source + "-" + p.nonce + "-" + strconv.FormatUint(p.seq.Add(1), 10)
	value, err := json.Marshal(Record{Schema: SchemaVersion, Type: typ, Source: p.cfg.Source, AtMS: now.UnixMilli(), ID: id, Event: event, Data: data})
	if err != nil {
		p.dropped.WithLabelValues("encode").Inc()
		return
	}
	r := &kgo.Record{Topic: p.cfg.TopicPrefix + topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
		{Key: "ce_specversion", Value: []byte("1.0")},
		{Key: "ce_id", Value: []byte(id)},
		{Key: "ce_source", Value: []byte("stagecast/" + p.cfg.Source)},
		{Key: "ce_type", Value: []byte("io.stagecast." + typ + ".v" + strconv.Itoa(SchemaVersion))},
		{Key: "ce_time", Value: []byte(now.UTC().Format(time.RFC3339Nano))},
		{Key: "content-type", Value: []byte("application/json")},
	}}
	p.cl.TryProduce(context.Background(), r, func(_ *kgo.Record, err error) {
		switch {
		case err == nil:
			p.sent.Inc()
		case errors.Is(err, kgo.ErrMaxBuffered):
			p.dropped.WithLabelValues("buffer_full").Inc()
		default:
			p.dropped.WithLabelValues("failed").Inc()
		}
	})
}

// Dropped is how many records were dropped so far, for every reason.
func (p *Producer) Dropped() float64 {
	if p == nil {
		return 0
	}
	var n float64
	for _, r := range []string{"buffer_full", "failed", "encode"} {
		n += counterValue(p.dropped.WithLabelValues(r))
	}
	return n
}

// Buffered is how many records wait for the brokers (bounded by MaxBufferedRecords).
func (p *Producer) Buffered() int64 {
	if p == nil {
		return 0
	}
	return p.cl.BufferedProduceRecords()
}

// Close flushes what is buffered (bounded by ctx) and closes the client.
func (p *Producer) Close(ctx context.Context) {
	if p == nil {
		return
	}
	if err := p.cl.Flush(ctx); err != nil {
		p.cfg.Logger.Warn("analytics: records not flushed at shutdown (dropped)", "buffered", p.cl.BufferedProduceRecords(), "err", err)
	}
	p.cl.Close()
}
