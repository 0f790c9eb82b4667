package analytics

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

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
	// Platforms: the same, per platform label (percentages of max(devices, sent)).
	Platforms map[string]PlatformConvergence `json:"platforms,omitempty"`
}

// PlatformConvergence is one platform's part of a Convergence.
type PlatformConvergence struct {
	Devices  int64   `json:"devices"`
	Sent     uint64  `json:"sent"`
	Acked    uint64  `json:"acked"`
	SentPct  float64 `json:"sent_pct"`
	AckedPct float64 `json:"acked_pct"`
}

// Merger keeps the latest "delivery" record per proxy, event and version and
// merges them. Records are cumulative, so a duplicate or a replay changes
// nothing (at-least-once delivery needs no other dedup here).
type Merger struct {
	latest map[mergeKey]mergeVal
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
func NewMerger() *Merger { return &Merger{latest: make(map[mergeKey]mergeVal)} }

// Add takes one record's value; records that are not deliveries are ignored.
func (m *Merger) Add(value []byte) error {
	var r struct {
		Record
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(value, &r); err != nil {
		return fmt.Errorf("analytics record: %w", err)
	}
	if r.Type != "delivery" {
		return nil
	}
	if r.Schema != SchemaVersion {
		return fmt.Errorf("analytics record schema %d, this reader knows %d", r.Schema, SchemaVersion)
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
		for p, sh := range mv.d.Platforms {
			if c.Platforms == nil {
				c.Platforms = map[string]PlatformConvergence{}
			}
			pc := c.Platforms[p]
			pc.Devices += sh.Devices
			pc.Sent += sh.Sent
			pc.Acked += sh.Acked
			c.Platforms[p] = pc
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
			if d := max(uint64(pc.Devices), pc.Sent); d > 0 {
				pc.SentPct = 100 * float64(pc.Sent) / float64(d)
				pc.AckedPct = 100 * float64(pc.Acked) / float64(d)
				c.Platforms[p] = pc
			}
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

// Consume reads the delivery, audit and devices topics from the start until ctx ends,
// handing each record to fn (topic, value).
func Consume(ctx context.Context, brokers []string, prefix string, fn func(topic string, value []byte)) error {
	if prefix == "" {
		prefix = "stagecast."
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(prefix+TopicDelivery, prefix+TopicAudit, prefix+TopicDevices),
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
