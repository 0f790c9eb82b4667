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
	// CatchUps: sends of this version from history when a device subscribed
	// (connected or reconnected) behind it.
	CatchUps uint64 `json:"catchups"`
	// Platforms splits the figures by platform label (tv, mobile, web,
	// console, unknown, other), with a coarse time-to-device histogram each.
	Platforms map[string]Share `json:"platforms,omitempty"`
	// Cells splits them by (platform, segment): a proxy names its first 31
	// segments, and counts the others as "(other)".
	Cells []Cell `json:"cells,omitempty"`
}

// Share is one platform's part of a Delivery.
type Share struct {
	Devices  int64           `json:"devices"`
	Sent     uint64          `json:"sent"`
	Acked    uint64          `json:"acked"`
	CatchUps uint64          `json:"catchups"`
	Latency  []engine.Bucket `json:"lat,omitempty"`
}

// Cell is one (platform, segment) part of a Delivery.
type Cell struct {
	Platform string `json:"platform"`
	Segment  string `json:"segment"`
	Devices  int64  `json:"devices"`
	Sent     uint64 `json:"sent"`
	Acked    uint64 `json:"acked"`
	CatchUps uint64 `json:"catchups"`
}

type cellKey struct{ platform, segment string }

// split fills d's catch-ups, platforms and cells from a version's counts and
// its event's devices.
func (d *Delivery) split(devices []engine.CellDevices, vd engine.VersionDelivery) {
	idx := map[cellKey]int{}
	d.Cells, d.Platforms, d.CatchUps = nil, nil, 0
	cell := func(p, s string) *Cell {
		k := cellKey{p, s}
		i, ok := idx[k]
		if !ok {
			i = len(d.Cells)
			idx[k] = i
			d.Cells = append(d.Cells, Cell{Platform: p, Segment: s})
		}
		return &d.Cells[i]
	}
	for _, cd := range devices {
		cell(cd.Platform, cd.Segment).Devices = cd.Devices
	}
	for _, cc := range vd.Cells {
		c := cell(cc.Platform, cc.Segment)
		c.Sent, c.Acked, c.CatchUps = cc.Sent, cc.Acked, cc.CatchUps
	}
	if len(d.Cells) == 0 {
		d.Cells = nil
		return
	}
	d.Platforms = map[string]Share{}
	for _, c := range d.Cells {
		sh := d.Platforms[c.Platform]
		sh.Devices += c.Devices
		sh.Sent += c.Sent
		sh.Acked += c.Acked
		sh.CatchUps += c.CatchUps
		d.Platforms[c.Platform] = sh
		d.CatchUps += c.CatchUps
	}
	for p, lat := range vd.PlatformLatency {
		sh := d.Platforms[p]
		sh.Latency = lat
		d.Platforms[p] = sh
	}
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
	counts   engine.VersionDelivery // the version's counts, as last reported
	moved    bool                   // changed since the last record
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
	cells := map[string][]engine.CellDevices{}
	for _, ed := range rep.Events {
		devices[ed.Event] = ed.Devices
		cells[ed.Event] = ed.DeviceCells
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
			t.d = Delivery{Proxy: rep.Proxy, V: vd.V, Devices: ed.Devices, Sent: vd.Sent, Acked: vd.Acked, Latency: vd.Latency}
			t.counts = vd
			t.d.split(ed.DeviceCells, vd)
			t.moved = true
		}
	}
	for k, t := range x.vers {
		if d, ok := devices[k.event]; ok {
			t.d.Devices = d
			t.d.split(cells[k.event], t.counts) // the devices now, the counts as last reported
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
