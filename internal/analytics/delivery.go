package analytics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/stagecast/stagecast/internal/engine"
)

// Delivery is the data of a "delivery" record: one proxy's running totals for
// one version of one event (cumulative: a consumer keeps the latest per
// source, event and v). Buckets are the delivery report's (ms from the stage's
// ts to each send).
type Delivery struct {
	Proxy   string          `json:"proxy"`
	V       uint64          `json:"v"`
	Devices int64           `json:"devices"`
	Sent    uint64          `json:"sent"`
	Acked   uint64          `json:"acked"`
	Latency []engine.Bucket `json:"lat"`
	Settled bool            `json:"settled"` // no send or ack since the previous record: the version's final figures here
	// Platforms splits devices, sent and acked by platform label (tv, mobile,
	// web, console, unknown, other).
	Platforms map[string]Share `json:"platforms,omitempty"`
}

// Share is one platform's part of a Delivery.
type Share struct {
	Devices int64  `json:"devices"`
	Sent    uint64 `json:"sent"`
	Acked   uint64 `json:"acked"`
}

func shares(devices map[string]int64, counts map[string]engine.PlatformCount) map[string]Share {
	if len(devices) == 0 && len(counts) == 0 {
		return nil
	}
	out := make(map[string]Share, max(len(devices), len(counts)))
	for p, n := range devices {
		out[p] = Share{Devices: n}
	}
	for p, c := range counts {
		sh := out[p]
		sh.Sent, sh.Acked = c.Sent, c.Acked
		out[p] = sh
	}
	return out
}

// EveryDelivery is how often a version that is still moving is emitted.
const EveryDelivery = 10 * time.Second

// maxTracked bounds the versions an exporter follows (the oldest go first).
const maxTracked = 4096

// DeliveryExporter turns a proxy's periodic delivery reports (proxy.Config.
// OnReport) into "delivery" records: each moving version every EveryDelivery,
// and once more when it settles. It runs on the report loop: it only copies
// counters, never waits.
type DeliveryExporter struct {
	p    *Producer
	now  func() time.Time
	mu   sync.Mutex
	vers map[verKey]*tracked
}

type verKey struct {
	event string
	v     uint64
}

type tracked struct {
	d        Delivery
	moved    bool // changed since the last record
	lastEmit time.Time
}

// NewDeliveryExporter returns an exporter emitting through p (nil p: a no-op).
func NewDeliveryExporter(p *Producer, now func() time.Time) *DeliveryExporter {
	if now == nil {
		now = time.Now
	}
	return &DeliveryExporter{p: p, now: now, vers: make(map[verKey]*tracked)}
}

// Observe takes one report: the versions in it moved; the others, if they
// moved before, have settled.
func (x *DeliveryExporter) Observe(rep engine.DeliveryReport) {
	if x == nil || x.p == nil {
		return
	}
	now := x.now()
	x.mu.Lock()
	defer x.mu.Unlock()
	seen := map[verKey]bool{}
	devices := map[string]int64{}
	devicesBy := map[string]map[string]int64{}
	for _, ed := range rep.Events {
		devices[ed.Event] = ed.Devices
		devicesBy[ed.Event] = ed.DevicesBy
		for _, vd := range ed.Versions {
			k := verKey{ed.Event, vd.V}
			seen[k] = true
			t := x.vers[k]
			if t == nil {
				if len(x.vers) >= maxTracked {
					x.evictOldest()
				}
				t = &tracked{lastEmit: now}
				x.vers[k] = t
			}
			t.d = Delivery{Proxy: rep.Proxy, V: vd.V, Devices: ed.Devices, Sent: vd.Sent, Acked: vd.Acked, Latency: vd.Latency,
				Platforms: shares(ed.DevicesBy, vd.Platforms)}
			t.moved = true
		}
	}
	for k, t := range x.vers {
		if d, ok := devices[k.event]; ok {
			t.d.Devices = d
			for p, sh := range t.d.Platforms {
				sh.Devices = devicesBy[k.event][p]
				t.d.Platforms[p] = sh
			}
		}
		switch {
		case t.moved && !seen[k]: // settled: the final figures
			t.d.Settled = true
			x.p.Emit(TopicDelivery, "delivery", k.event, t.d)
			t.moved, t.lastEmit = false, now
		case t.moved && now.Sub(t.lastEmit) >= EveryDelivery:
			t.d.Settled = false
			x.p.Emit(TopicDelivery, "delivery", k.event, t.d)
			t.lastEmit = now
		case !t.moved && now.Sub(t.lastEmit) > time.Hour:
			delete(x.vers, k) // settled long ago
		}
	}
}

func (x *DeliveryExporter) evictOldest() {
	var ok bool
	var oldest verKey
	var at time.Time
	for k, t := range x.vers {
		if !ok || t.lastEmit.Before(at) {
			oldest, at, ok = k, t.lastEmit, true
		}
	}
	delete(x.vers, oldest)
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
