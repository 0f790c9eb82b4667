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
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// TestAnalyticsEqualsDeliveryReport (issue 20): a proxy's delivery aggregates
// go to Kafka (kfake, a real wire-protocol broker) as they are reported; a
// consumer that merges them (analytics.Merger, what `stagecast analytics tail`
// prints) sees, per version, the broadcaster's delivery report: devices, sent,
// acked, and the time-to-device percentiles, and the same split per platform
// (half the devices are tv, half mobile) and per (platform, segment) cell
// (each platform half eu, half us); the first stage reached every device from
// history (catch-ups). The audit trail arrives too.
func TestAnalyticsEqualsDeliveryReport(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(1, "stagecast.audit", "stagecast.delivery", "stagecast.devices"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close) // registered first: it runs after the producers' flush
	eng := memengine.New(memengine.Config{})
	var exp *analytics.DeliveryExporter
	pp := testProducer(t, kc, "proxy/p1")
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
	bp := testProducer(t, kc, "broadcaster/b1")
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnAudit: func(ev string, a engine.AuditEntry) { bp.Emit(analytics.TopicAudit, a.Action, ev, a) }}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	bc := &producer.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pre, err := bc.SetStage(ctx, "an", "pre-show", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	var cur [n]atomic.Uint64
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	for i := range n {
		plat, seg := []string{"tv", "mobile"}[i%2], []string{"eu", "us"}[(i/2)%2]
		d, err := device.New(device.Config{URLs: []string{url}, Device: fmt.Sprintf("an-%d", i), Platform: plat, Segment: seg, Events: map[string]uint64{"an": 0}, Ack: true,
			OnStage: func(f wire.ProxyFrame, _ time.Time) { cur[i].Store(f.V) }})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }() // the devices end before the servers
	eventually(t, 10*time.Second, "every device on pre-show (from history)", func() bool {
		for i := range cur {
			if cur[i].Load() != pre.V {
				return false
			}
		}
		return true
	})
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
						tv.SentPct == 100 && mob.SentPct == 100 && len(c.Platforms) == 2 &&
						tv.SentMS["p100"] != nil && mob.SentMS["p100"] != nil && cellsEven(c.Cells, n/4)
				}
			}
			return false
		})
	}
	eventually(t, 10*time.Second, "pre-show reached every device from history: catch-ups", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range m.Versions("an") {
			if c.V == pre.V {
				return c.CatchUps == n && c.Platforms["tv"].CatchUps == n/2 && c.Cells["mobile/us"].CatchUps == n/4
			}
		}
		return false
	})
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

// cellsEven: four cells (tv, mobile) x (eu, us), each with per devices, all
// of them sent and acked.
func cellsEven(cells map[string]analytics.PlatformConvergence, per int) bool {
	if len(cells) != 4 {
		return false
	}
	for _, k := range []string{"tv/eu", "tv/us", "mobile/eu", "mobile/us"} {
		c := cells[k]
		if c.Devices != int64(per) || c.Sent != uint64(per) || c.Acked != uint64(per) || c.SentPct != 100 {
			return false
		}
	}
	return true
}

// testProducer is a producer to kc that flushes (for at most 2 s) when the test ends.
func testProducer(t *testing.T, kc *kfake.Cluster, source string) *analytics.Producer {
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

func same(a, b *int64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

// TestAnalyticsConnectionsAndNotes (issue 20): the per-interval records. A
// proxy streams its connects, disconnects by close code and refused
// admissions ("connections"); the broadcaster, the proxy and a prefetch
// server each stream what they did with notifications per type and priority
// ("notes": accepted, pushed and acked, pulled). A consumer's totals
// (analytics.Merger, what `stagecast analytics tail` prints) are the sums.
func TestAnalyticsConnectionsAndNotes(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(1, analytics.Topics("stagecast.")...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	activity := func(source string) *analytics.Activity {
		return analytics.NewActivity(testProducer(t, kc, source), source, nil)
	}
	pAct, bAct, fAct := activity("proxy/p1"), activity("broadcaster/b1"), activity("prefetch/f1")
	signer, verifier, err := devicetoken.NewTestPair("an")
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng := memengine.New(memengine.Config{})
	p, err := proxy.New(proxy.Config{ID: "p1", ReportInterval: 50 * time.Millisecond, Tokens: verifier, Logger: quiet,
		OnActivity: func(a proxy.Activity) {
			pAct.Connections(a.Connections, a.Connects, a.Disconnects, a.Refused)
			for k, n := range a.Notes {
				pAct.Note(analytics.NoteClass{Type: k.Type, Priority: k.Priority}, analytics.Notes{Pushed: n.Pushed, Acked: n.Acked})
			}
		}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(p.Handler())
	t.Cleanup(func() { p.Close(); hs.Close() })
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet, OnNote: func(n broadcaster.NoteAccepted) {
		bAct.Stored(analytics.NoteClass{Type: n.Type, Priority: n.Priority}, uint64(n.Members), uint64(n.Devices), uint64(n.Stored), n.Expires)
	}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	bc := &producer.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}
	pf, err := graph.NewServer(graph.ServerConfig{Identity: prefetch.IdentityConfig{Tokens: verifier}, OnPull: func(typ, prio string) {
		fAct.Note(analytics.NoteClass{Type: typ, Priority: prio}, analytics.Notes{Pulled: 1})
	}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	gql := "http://" + serveHTTP(t, pf.Handler()) + "/graphql"
	mint := func(dev, member string) string {
		tok, err := signer.Mint(devicetoken.Claims{Device: dev, Member: member}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dctx, stopDevices := context.WithCancel(ctx)
	defer stopDevices()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	var wg sync.WaitGroup
	var got atomic.Int64
	for i := range 3 {
		d, err := device.New(device.Config{URLs: []string{url}, Token: mint(fmt.Sprintf("nd-%d", i), fmt.Sprintf("m%d", i)), Notes: true, AckNotes: true,
			OnFrame: func(f wire.ProxyFrame) {
				if f.Op == wire.OpNote {
					got.Add(1)
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(dctx) }()
	}
	defer wg.Wait()
	eventually(t, 10*time.Second, "3 devices registered", func() bool {
		return metricValue(t, p, "stagecast_proxy_inbox_registrations_total") >= 3
	})
	// a refused admission: a token signed by another key
	other, _, err := devicetoken.NewTestPair("other")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := other.Mint(devicetoken.Claims{Device: "intruder"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := device.PullInbox(ctx, nil, gql, bad, "", 1); err == nil {
		t.Fatal("a foreign token pulled an inbox")
	}
	refused, err := device.New(device.Config{URLs: []string{url}, Token: bad, BackoffBase: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_ = refused.Run(rctx)
	rcancel()
	// one notification to the three online members and one offline
	if _, err := bc.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m0", "m1", "m2", "m3"}},
		Type: "goal", Priority: "high", Payload: json.RawMessage(`{"team":"home"}`)}, ""); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the 3 online devices got the note", func() bool { return got.Load() == 3 })
	if page, err := device.PullInbox(ctx, nil, gql, mint("nd-3", "m3"), "", 10); err != nil || len(page.Notes) != 1 {
		t.Fatalf("the offline member's pull: %+v, %v", page, err)
	}
	stopDevices()
	wg.Wait()

	m := analytics.NewMerger()
	var mu sync.Mutex
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go func() {
		_ = analytics.Consume(cctx, kc.ListenAddrs(), "", func(_ string, value []byte) {
			mu.Lock()
			defer mu.Unlock()
			if err := m.Add(value); err != nil {
				t.Error(err)
			}
		})
	}()
	var last string
	eventually(t, 20*time.Second, "the totals: 3 connects, 3 closes, a refusal; the note accepted, pushed 3, acked 3, pulled 1", func() bool {
		for _, a := range []*analytics.Activity{pAct, bAct, fAct} {
			a.Flush() // the interval is 10 s; a test does not wait for it
		}
		mu.Lock()
		defer mu.Unlock()
		tot, notes := m.Totals()
		last = fmt.Sprintf("%+v %+v", tot, notes)
		if len(notes) != 1 {
			return false
		}
		n := notes[0]
		return tot.Connects == 3 && tot.Disconnects["closed"] == 3 && tot.Refused["unauthorized"] >= 1 && len(tot.Connections) == 1 &&
			tot.Connections["proxy/p1"] == 0 &&
			n.Type == "goal" && n.Priority == "high" && n.Accepted == 1 && n.Members == 4 && n.Pushed == 3 && n.Acked == 3 && n.Pulled == 1
	})
	t.Log(last)
}
