package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// TestAnalyticsEqualsDeliveryReport (issue 20): a proxy's delivery aggregates
// go to Kafka (kfake, a real wire-protocol broker) as they are reported; a
// consumer that merges them (analytics.Merger, what `stagecast analytics tail`
// prints) sees, per version, the broadcaster's delivery report: devices, sent,
// acked, and the time-to-device percentiles, and the same split per platform
// (half the devices are tv, half mobile). The audit trail arrives too.
func TestAnalyticsEqualsDeliveryReport(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(1, "stagecast.audit", "stagecast.delivery", "stagecast.devices"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close) // registered first: it runs after the producers' flush
	newProducer := func(source string) *analytics.Producer {
		p, err := analytics.New(analytics.Config{Brokers: kc.ListenAddrs(), Source: source, Linger: 5 * time.Millisecond, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			p.Close(fctx)
		})
		return p
	}
	eng := engine.NewMemory(engine.MemoryConfig{})
	var exp *analytics.DeliveryExporter
	pp := newProducer("proxy/p1")
	exp = analytics.NewDeliveryExporter(pp, nil)
	p, err := proxy.New(proxy.Config{ID: "p1", ReportInterval: 50 * time.Millisecond, OnReport: exp.Observe,
		SampleDevice: func(d string) bool { return analytics.InSample(d, 0.5) },
		OnDeviceSample: func(d proxy.DeviceSample) {
			pp.EmitKeyed(analytics.TopicDevices, "device_"+d.Kind, d.Event, d.Device, d)
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(p.Handler())
	t.Cleanup(func() { p.Close(); hs.Close() })
	bp := newProducer("broadcaster/b1")
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnAudit: func(ev string, a engine.AuditEntry) { bp.Emit(analytics.TopicAudit, a.Action, ev, a) }}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	bc := &broadcaster.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := bc.SetStage(ctx, "an", "pre-show", nil, ""); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	var cur [n]atomic.Uint64
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	for i := range n {
		plat := []string{"tv", "mobile"}[i%2]
		d, err := device.New(device.Config{URLs: []string{url}, Device: fmt.Sprintf("an-%d", i), Platform: plat, Events: map[string]uint64{"an": 0}, Ack: true,
			OnStage: func(f wire.ProxyFrame, _ time.Time) { cur[i].Store(f.V) }})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }() // the devices end before the servers
	var versions []uint64
	for _, key := range []string{"round-3", "knockout"} {
		st, err := bc.SetStage(ctx, "an", key, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, st.V)
		eventually(t, 10*time.Second, "every device on "+key, func() bool {
			for i := range cur {
				if cur[i].Load() != st.V {
					return false
				}
			}
			return true
		})
	}
	m := analytics.NewMerger()
	var mu sync.Mutex
	audits := map[string]int{}
	samples := map[string]map[string]int{} // device -> kind -> count
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go func() {
		_ = analytics.Consume(cctx, kc.ListenAddrs(), "", func(topic string, value []byte) {
			mu.Lock()
			defer mu.Unlock()
			if topic == analytics.TopicAudit {
				audits[string(value)]++
				return
			}
			if topic == analytics.TopicDevices {
				var r struct {
					analytics.Record
					Data proxy.DeviceSample `json:"data"`
				}
				if err := json.Unmarshal(value, &r); err != nil {
					t.Error(err)
					return
				}
				if samples[r.Data.Device] == nil {
					samples[r.Data.Device] = map[string]int{}
				}
				samples[r.Data.Device][r.Data.Kind]++
				return
			}
			if err := m.Add(value); err != nil {
				t.Error(err)
			}
		})
	}()
	for _, v := range versions {
		eventually(t, 20*time.Second, fmt.Sprintf("the stream agrees with the report for v%d", v), func() bool {
			rep, err := bc.Report(ctx, "an", v)
			if err != nil || rep.Acked != n {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			for _, c := range m.Versions("an") {
				if c.V == v {
					tv, mob := c.Platforms["tv"], c.Platforms["mobile"]
					return c.Devices == rep.Devices && c.Sent == rep.Sent && c.Acked == rep.Acked && c.SentPct == rep.SentPct &&
						same(c.SentMS["p50"], rep.SentMS["p50"]) && same(c.SentMS["p99"], rep.SentMS["p99"]) && same(c.SentMS["p100"], rep.SentMS["p100"]) &&
						// per platform: half the devices each, every one on the version
						tv.Devices == n/2 && mob.Devices == n/2 && tv.Sent == n/2 && mob.Sent == n/2 && tv.Acked == n/2 && mob.Acked == n/2 &&
						tv.SentPct == 100 && mob.SentPct == 100 && len(c.Platforms) == 2
				}
			}
			return false
		})
	}
	// The device sample: exactly the devices InSample picks, each with its
	// connect, its stages (at least the two changes: a device that subscribed
	// after round-3 caught up to it directly) and its acks.
	eventually(t, 10*time.Second, "the sampled devices' events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range n {
			id := fmt.Sprintf("an-%d", i)
			s := samples[id]
			if analytics.InSample(id, 0.5) != (s != nil) {
				return false
			}
			if s != nil && (s["connect"] != 1 || s["stage"] < 2 || s["ack"] < 2) {
				return false
			}
		}
		return len(samples) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(audits) < 3 {
		t.Fatalf("%d audit records, want the 3 stage changes", len(audits))
	}
}

func same(a, b *int64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
