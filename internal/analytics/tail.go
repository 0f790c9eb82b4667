package analytics

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/stagecast/stagecast/internal/engine"
)

// Convergence is one version's delivery merged over the proxies, as
// `stagecast stage report` computes it (engine.Percentiles, the same
// denominator: max(devices, sent)).
type Convergence struct {
	Event    string            `json:"event"`
	V        uint64            `json:"v"`
	Proxies  int               `json:"proxies"`
	Devices  int64             `json:"devices"`
	Sent     uint64            `json:"sent"`
	Acked    uint64            `json:"acked"`
	SentPct  float64           `json:"sent_pct"`
	AckedPct float64           `json:"acked_pct"`
	SentMS   map[string]*int64 `json:"sent_ms"`
	CatchUps uint64            `json:"catchups"`
	// Platforms: the same, per platform label (percentages of max(devices,
	// sent); SentMS from the platform's coarse buckets).
	Platforms map[string]PlatformConvergence `json:"platforms,omitempty"`
	// Cells: the same per (platform, segment), keyed "platform/segment"
	// (no SentMS: cells carry counts only).
	Cells map[string]PlatformConvergence `json:"cells,omitempty"`
}

// PlatformConvergence is one platform's (or cell's) part of a Convergence.
type PlatformConvergence struct {
	Devices  int64             `json:"devices"`
	Sent     uint64            `json:"sent"`
	Acked    uint64            `json:"acked"`
	CatchUps uint64            `json:"catchups"`
	SentPct  float64           `json:"sent_pct"`
	AckedPct float64           `json:"acked_pct"`
	SentMS   map[string]*int64 `json:"sent_ms,omitempty"`
	lat      []engine.Bucket
}

func (pc *PlatformConvergence) add(devices int64, sent, acked, catchups uint64) {
	pc.Devices += devices
	pc.Sent += sent
	pc.Acked += acked
	pc.CatchUps += catchups
}

func (pc *PlatformConvergence) finish() {
	d := max(uint64(pc.Devices), pc.Sent)
	if d > 0 {
		pc.SentPct = 100 * float64(pc.Sent) / float64(d)
		pc.AckedPct = 100 * float64(pc.Acked) / float64(d)
	}
	if len(pc.lat) > 0 {
		pc.SentMS = engine.Percentiles(pc.lat, d)
		pc.lat = nil
	}
}

// Topics is every topic this schema writes, after prefix.
func Topics(prefix string) []string {
	out := make([]string, 0, 6)
	for _, t := range []string{TopicAudit, TopicDelivery, TopicDevices, TopicConnections, TopicNotes, TopicPrefetch} {
		out = append(out, prefix+t)
	}
	return out
}

// Merger keeps the latest "delivery" record per proxy, event and version and
// merges them. Records are cumulative, so a duplicate or a replay changes
// nothing (at-least-once delivery needs no other dedup here).
type Merger struct {
	latest map[mergeKey]mergeVal
	// interval records (connections, notes) are not cumulative: they are
	// summed once each, duplicates dropped by id (the last maxSeenIDs ids)
	seen   *lru.Cache[string, struct{}]
	totals Totals
}

// maxSeenIDs is how many record ids the Merger remembers to drop duplicates.
const maxSeenIDs = 100000

// Totals sums the interval records since the consumer started: connects,
// disconnects and refusals over the proxies, the devices connected now
// (the latest record per proxy), and the notification counts per class.
type Totals struct {
	Connections map[string]int       `json:"connections"` // per proxy, latest
	Connects    uint64               `json:"connects"`
	Disconnects map[string]uint64    `json:"disconnects"`
	Refused     map[string]uint64    `json:"refused"`
	Notes       map[NoteClass]*Notes `json:"-"`
}

type mergeKey struct {
	proxy, event string
	v            uint64
}

type mergeVal struct {
	at int64
	d  Delivery
}

// NewMerger returns an empty Merger.
func NewMerger() *Merger {
	seen, _ := lru.New[string, struct{}](maxSeenIDs)
	return &Merger{latest: make(map[mergeKey]mergeVal), seen: seen,
		totals: Totals{Connections: map[string]int{}, Notes: map[NoteClass]*Notes{}}}
}

// Totals returns a copy of the interval sums (notes as a list, by type then priority).
func (m *Merger) Totals() (Totals, []Notes) {
	t := m.totals
	t.Connections = maps.Clone(t.Connections)
	t.Disconnects, t.Refused = maps.Clone(t.Disconnects), maps.Clone(t.Refused)
	t.Notes = nil
	notes := make([]Notes, 0, len(m.totals.Notes))
	for _, n := range m.totals.Notes {
		notes = append(notes, *n)
	}
	sort.Slice(notes, func(i, j int) bool {
		if notes[i].Type != notes[j].Type {
			return notes[i].Type < notes[j].Type
		}
		return notes[i].Priority < notes[j].Priority
	})
	return t, notes
}

// addInterval sums one connections or notes record, once per id.
func (m *Merger) addInterval(r Record, data json.RawMessage) error {
	if _, dup := m.seen.Get(r.ID); dup {
		return nil
	}
	m.seen.Add(r.ID, struct{}{})
	switch r.Type {
	case "connections":
		var c Connections
		if err := json.Unmarshal(data, &c); err != nil {
			return fmt.Errorf("analytics connections: %w", err)
		}
		m.totals.Connections[c.Proxy] = c.Connections
		m.totals.Connects += c.Connects
		m.totals.Disconnects = addCounts(m.totals.Disconnects, c.Disconnects)
		m.totals.Refused = addCounts(m.totals.Refused, c.Refused)
	case "notes":
		var n Notes
		if err := json.Unmarshal(data, &n); err != nil {
			return fmt.Errorf("analytics notes: %w", err)
		}
		k := NoteClass{n.Type, n.Priority}
		cur := m.totals.Notes[k]
		if cur == nil {
			cur = &Notes{Type: n.Type, Priority: n.Priority}
			m.totals.Notes[k] = cur
		}
		cur.IntervalMS += n.IntervalMS
		cur.add(n)
	}
	return nil
}

// Add takes one record's value; records that are not deliveries are ignored.
func (m *Merger) Add(value []byte) error {
	var r struct {
		Record
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(value, &r); err != nil {
		return fmt.Errorf("analytics record: %w", err)
	}
	if r.Type != "delivery" && r.Type != "connections" && r.Type != "notes" {
		return nil
	}
	if r.Schema != SchemaVersion {
		return fmt.Errorf("analytics record schema %d, this reader knows %d", r.Schema, SchemaVersion)
	}
	if r.Type != "delivery" {
		return m.addInterval(r.Record, r.Data)
	}
	var d Delivery
	if err := json.Unmarshal(r.Data, &d); err != nil {
		return fmt.Errorf("analytics delivery: %w", err)
	}
	k := mergeKey{d.Proxy, r.Event, d.V}
	if cur, ok := m.latest[k]; !ok || r.AtMS >= cur.at {
		m.latest[k] = mergeVal{r.AtMS, d}
	}
	return nil
}

// Versions returns every version of event (all events when ""), merged, newest first.
func (m *Merger) Versions(event string) []Convergence {
	byVer := map[mergeKey]*Convergence{}
	buckets := map[mergeKey][]engine.Bucket{}
	for k, mv := range m.latest {
		if event != "" && k.event != event {
			continue
		}
		vk := mergeKey{event: k.event, v: k.v}
		c := byVer[vk]
		if c == nil {
			c = &Convergence{Event: k.event, V: k.v}
			byVer[vk] = c
		}
		c.Proxies++
		c.Devices += mv.d.Devices
		c.Sent += mv.d.Sent
		c.Acked += mv.d.Acked
		c.CatchUps += mv.d.CatchUps
		for p, sh := range mv.d.Platforms {
			if c.Platforms == nil {
				c.Platforms = map[string]PlatformConvergence{}
			}
			pc := c.Platforms[p]
			pc.add(sh.Devices, sh.Sent, sh.Acked, sh.CatchUps)
			pc.lat = append(pc.lat, sh.Latency...)
			c.Platforms[p] = pc
		}
		for _, cell := range mv.d.Cells {
			if c.Cells == nil {
				c.Cells = map[string]PlatformConvergence{}
			}
			key := cell.Platform + "/" + cell.Segment
			pc := c.Cells[key]
			pc.add(cell.Devices, cell.Sent, cell.Acked, cell.CatchUps)
			c.Cells[key] = pc
		}
		buckets[vk] = append(buckets[vk], mv.d.Latency...)
	}
	out := make([]Convergence, 0, len(byVer))
	for k, c := range byVer {
		denom := max(uint64(c.Devices), c.Sent)
		c.SentMS = engine.Percentiles(buckets[k], denom)
		if denom > 0 {
			c.SentPct = 100 * float64(c.Sent) / float64(denom)
			c.AckedPct = 100 * float64(c.Acked) / float64(denom)
		}
		for p, pc := range c.Platforms {
			pc.finish()
			c.Platforms[p] = pc
		}
		for k, pc := range c.Cells {
			pc.finish()
			c.Cells[k] = pc
		}
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Event != out[j].Event {
			return out[i].Event < out[j].Event
		}
		return out[i].V > out[j].V
	})
	return out
}

// Consume reads every topic (delivery, audit, devices, connections, notes,
// prefetch) from the start until ctx ends,
// handing each record to fn (topic, value).
func Consume(ctx context.Context, brokers []string, prefix string, fn func(topic string, value []byte)) error {
	if prefix == "" {
		prefix = "stagecast."
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(Topics(prefix)...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.MetadataMaxAge(5*time.Second)) // a topic created after the start is found soon
	if err != nil {
		return fmt.Errorf("analytics consumer: %w", err)
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(t string, p int32, err error) { _ = err })
		fs.EachRecord(func(r *kgo.Record) { fn(r.Topic[len(prefix):], r.Value) })
	}
}
