package analytics_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/prefetch"
)

// broker starts an in-process Kafka wire-protocol cluster (kfake).
func broker(t testing.TB) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(1, analytics.Topics("stagecast.")...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func producer(t testing.TB, c *kfake.Cluster, cfg analytics.Config) *analytics.Producer {
	t.Helper()
	cfg.Brokers = c.ListenAddrs()
	if cfg.Source == "" {
		cfg.Source = "proxy/test"
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	cfg.Linger = 5 * time.Millisecond
	p, err := analytics.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
}

type got struct {
	mu      sync.Mutex
	topics  []string
	values  [][]byte
	headers []map[string]string
}

func (g *got) n() int { g.mu.Lock(); defer g.mu.Unlock(); return len(g.values) }

// consume reads both topics from the start with a plain franz-go consumer, as
// a data engineer's would.
func consume(t *testing.T, c *kfake.Cluster) *got {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(analytics.Topics("stagecast.")...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &got{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				h := map[string]string{}
				for _, x := range r.Headers {
					h[x.Key] = string(x.Value)
				}
				g.mu.Lock()
				g.topics, g.values, g.headers = append(g.topics, r.Topic), append(g.values, r.Value), append(g.headers, h)
				g.mu.Unlock()
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cl.Close() })
	return g
}

// TestSchemaRoundTrip: a record as a consumer sees it: the envelope, the
// type's data, the key, CloudEvents' binary-mode headers.
func TestSchemaRoundTrip(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{Source: "broadcaster/b1"})
	g := consume(t, c)
	p.Emit(analytics.TopicAudit, "set_stage", "fight", engine.AuditEntry{AtMS: 7, Producer: "alice", Action: "set_stage", Stage: "round-3", V: 42, Result: "created"})
	waitfor.True(t, 10*time.Second, "the record", func() bool { return g.n() == 1 })
	var r struct {
		analytics.Record
		Data engine.AuditEntry `json:"data"`
	}
	if err := json.Unmarshal(g.values[0], &r); err != nil {
		t.Fatal(err)
	}
	if r.Schema != analytics.SchemaVersion || r.Type != "set_stage" || r.Event != "fight" || r.Source != "broadcaster/b1" || r.ID == "" ||
		r.Data.V != 42 || r.Data.Producer != "alice" || g.topics[0] != "stagecast.audit" {
		t.Fatalf("record %+v on %s", r, g.topics[0])
	}
	h := g.headers[0]
	if h["ce_specversion"] != "1.0" || h["ce_id"] != r.ID || h["ce_type"] != "io.stagecast.set_stage.v1" || h["ce_source"] != "stagecast/broadcaster/b1" ||
		h["content-type"] != "application/json" || h["ce_time"] == "" {
		t.Fatalf("headers %v", h)
	}
}

// TestExporterEmitsMovingAndSettled: a moving version is emitted every
// EveryDelivery and once more when it settles; cumulative figures, so the
// merger's view equals the last report.
func TestExporterEmitsMovingAndSettled(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{})
	g := consume(t, c)
	now := time.Unix(1000, 0)
	x := analytics.NewDeliveryExporter(p, func() time.Time { return now })
	rep := func(sent, acked uint64, moving bool) engine.DeliveryReport {
		ed := engine.EventDelivery{Event: "ev", Devices: 10}
		if moving {
			ed.Versions = []engine.VersionDelivery{{V: 5, Sent: sent, Acked: acked, Latency: []engine.Bucket{{UpperMS: 40, Count: sent}}}}
		}
		return engine.DeliveryReport{Proxy: "p1", AtMS: now.UnixMilli(), Events: []engine.EventDelivery{ed}}
	}
	x.Observe(rep(3, 1, true)) // new: not yet 10 s
	now = now.Add(analytics.EveryDelivery)
	x.Observe(rep(8, 6, true)) // moving, 10 s later: emitted
	now = now.Add(time.Second)
	x.Observe(rep(10, 10, true))
	now = now.Add(time.Second)
	x.Observe(rep(0, 0, false)) // not in the report: settled, the final figures
	x.Observe(rep(0, 0, false)) // nothing more
	waitfor.True(t, 10*time.Second, "two records", func() bool { return g.n() == 2 })
	m := analytics.NewMerger()
	for _, v := range g.values {
		if err := m.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	vs := m.Versions("ev")
	if len(vs) != 1 || vs[0].Sent != 10 || vs[0].Acked != 10 || vs[0].Devices != 10 || vs[0].SentPct != 100 || *vs[0].SentMS["p100"] != 40 {
		t.Fatalf("merged %+v", vs)
	}
	var last struct {
		Data analytics.Delivery `json:"data"`
	}
	_ = json.Unmarshal(g.values[1], &last)
	if !last.Data.Settled {
		t.Fatalf("the last record is not marked settled: %+v", last.Data)
	}
	// A duplicate (at-least-once) changes nothing.
	if err := m.Add(g.values[1]); err != nil || m.Versions("ev")[0].Sent != 10 {
		t.Fatalf("after a duplicate: %+v %v", m.Versions("ev"), err)
	}
}

// TestDropsWhenBrokersFail: with every produce request failing (the broker
// "down"), Emit never blocks, the buffer stays within its bound (what cannot
// be sent waits there, retried), and every record past it is dropped and
// counted. After the heal, the buffered records and new ones are delivered.
func TestDropsWhenBrokersFail(t *testing.T) {
	c := broker(t)
	var down atomic.Bool
	down.Store(true)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if down.Load() {
			return nil, errors.New("down"), true // close the connection: no produce succeeds
		}
		return nil, nil, false // healthy: the cluster answers
	})
	reg := prometheus.NewRegistry()
	p := producer(t, c, analytics.Config{MaxBufferedRecords: 100, Registerer: reg})
	g := consume(t, c)
	for i := range 5000 {
		p.Emit(analytics.TopicDelivery, "delivery", "ev", analytics.Delivery{Proxy: "p", V: uint64(i)})
		if b := p.Buffered(); b > 100 {
			t.Fatalf("%d records buffered, bound 100", b)
		}
	}
	waitfor.True(t, 30*time.Second, "drops counted", func() bool { return p.Dropped() == 4900 })
	// Read here, not at the end: after the heal, a record offered while the
	// buffer still holds the 100 (unacknowledged until the broker answers) is
	// rightly dropped for a full buffer too.
	if full := testutil.ToFloat64(droppedVec(t, reg).WithLabelValues("buffer_full")); full != 4900 {
		t.Fatalf("dropped for a full buffer %v, want the 4900 that did not fit", full)
	}
	if g.n() != 0 {
		t.Fatalf("%d records delivered while the broker was down", g.n())
	}
	down.Store(false)
	// At-least-once: a retry across the outage may deliver a record twice, so
	// count distinct versions.
	distinct := func() map[uint64]bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		vs := map[uint64]bool{}
		for _, v := range g.values {
			var r struct {
				Data analytics.Delivery `json:"data"`
			}
			if json.Unmarshal(v, &r) == nil {
				vs[r.Data.V] = true
			}
		}
		return vs
	}
	waitfor.True(t, 60*time.Second, "the buffered 100 delivered after the heal", func() bool { return len(distinct()) == 100 })
	// New records flow again. Under load, the first after the outage may
	// still fail (a retried batch's delivery timeout): that is a drop counted
	// as "failed", never a block; so offer one every 250 ms until one lands.
	next := uint64(10000)
	waitfor.True(t, 30*time.Second, "a new record delivered", func() bool {
		vs := distinct()
		for v := range vs {
			if v >= 10000 {
				return true
			}
		}
		p.Emit(analytics.TopicDelivery, "delivery", "ev", analytics.Delivery{Proxy: "p", V: next})
		next++
		time.Sleep(250 * time.Millisecond) // between offers, not a wait for a condition
		return false
	})
}

// droppedVec finds the producer's stagecast_analytics_dropped_total in reg.
func droppedVec(t *testing.T, reg *prometheus.Registry) *prometheus.CounterVec {
	t.Helper()
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "analytics", Name: "dropped_total",
		Help: "Analytics records dropped, by reason: buffer_full (Kafka slow or down: the buffer is bounded), failed (not delivered within the delivery timeout), encode."}, []string{"reason"})
	err := reg.Register(v)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("dropped_total not registered by the producer: %v", err)
	}
	return are.ExistingCollector.(*prometheus.CounterVec)
}

func TestConfig(t *testing.T) {
	if p, err := analytics.New(analytics.Config{}); p != nil || err != nil {
		t.Fatalf("no brokers: %v %v, want off", p, err)
	}
	if _, err := analytics.New(analytics.Config{Brokers: []string{"127.0.0.1:1"}}); err == nil || !strings.Contains(err.Error(), "Source") {
		t.Fatalf("no source: %v", err)
	}
	if _, err := analytics.New(analytics.Config{Brokers: []string{"127.0.0.1:1"}, Source: "x", SASLMechanism: "GSSAPI"}); err == nil {
		t.Fatal("an unknown SASL mechanism was accepted")
	}
	var p *analytics.Producer // off: every call is a no-op
	p.Emit(analytics.TopicAudit, "t", "e", nil)
	p.Close(context.Background())
}

// TestInSample: a stable sample of about the rate, by the device id alone (so
// every proxy, and every reconnect, makes the same choice).
func TestInSample(t *testing.T) {
	n := 0
	for i := range 100000 {
		id := "dev-" + strconv.Itoa(i)
		in := analytics.InSample(id, 0.01)
		if in != analytics.InSample(id, 0.01) {
			t.Fatalf("%s: two answers", id)
		}
		if in {
			n++
			if !analytics.InSample(id, 0.05) {
				t.Fatalf("%s is in the 1%% sample but not in the 5%% one", id)
			}
		}
	}
	if n < 900 || n > 1100 {
		t.Fatalf("%d of 100,000 devices sampled at 1%%", n)
	}
	if analytics.InSample("x", 0) || analytics.InSample("", 1) || !analytics.InSample("x", 1) {
		t.Fatal("rate 0 samples nothing, rate 1 every device with an id")
	}
}

// TestPrefetchCounts: a prefetch server's lookups per event by result, and its
// sheds by priority, as records every interval (here flushed by hand); the
// counts start again after each record.
func TestPrefetchCounts(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{Source: "prefetch/pf1"})
	g := consume(t, c)
	eng := memengine.New(memengine.Config{})
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	x := analytics.NewPrefetchCounter(p, "pf1", nil)
	cache, err := prefetch.NewCache(prefetch.Config{OnLookup: x.Lookup, Registerer: prometheus.NewRegistry()}, eng)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := cache.Get(context.Background(), "ev"); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = cache.Get(context.Background(), "nope")
	x.Shed("normal", "inflight")
	x.Shed("normal", "latency")
	x.Flush()
	x.Flush() // nothing new: nothing emitted
	waitfor.True(t, 10*time.Second, "3 records", func() bool { return g.n() == 3 })
	byEvent := map[string]analytics.Prefetch{}
	for _, v := range g.values {
		var r struct {
			analytics.Record
			Data analytics.Prefetch `json:"data"`
		}
		if err := json.Unmarshal(v, &r); err != nil {
			t.Fatal(err)
		}
		byEvent[r.Event] = r.Data
	}
	if ev := byEvent["ev"]; ev.Requests != 5 || ev.Results["miss"] != 1 || ev.Results["hit"] != 4 || ev.Server != "pf1" {
		t.Fatalf("ev: %+v", ev)
	}
	if nope := byEvent["nope"]; nope.Requests != 1 || nope.Results["miss"] != 1 || nope.Results["not_found"] != 1 {
		t.Fatalf("nope: %+v", nope)
	}
	if shed := byEvent[""]; shed.Shed["normal"] != 2 {
		t.Fatalf("sheds: %+v", shed)
	}
}
