// Package netfault breaks network links on purpose, for game days. A Link is
// a TCP relay on loopback (an embedded toxiproxy proxy) that one member of a
// fleet dials instead of its peer: a proxy's or the broadcaster's way to one
// Redis node, or the devices' way in to one proxy. While healthy it copies
// bytes both ways; a Fault makes it drop (partition, blackhole), slow
// (delay, bandwidth) or reset what crosses it, until Heal.
//
// What a Link cannot do: it accepts TCP connections even while partitioned
// (the relay is on the member's own host), so a partitioned member sees its
// connections open and then nothing answer, as behind a firewall that drops
// packets, never "connection refused". Links carry only what is routed
// through them: Redis's own replication and cluster bus are not.
//
// Concurrency: a Links and its Link values are safe for concurrent use.
package netfault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Kinds of fault.
const (
	// Partition drops everything in Direction, silently: no reset, no error;
	// the member notices only by its own timeouts.
	Partition = "partition"
	// Blackhole accepts and never answers: what the member sends arrives, no
	// reply comes back (a partition of the direction "in").
	Blackhole = "blackhole"
	// Delay adds Latency, +/- Jitter, to each direction it applies to.
	Delay = "delay"
	// Bandwidth caps each direction it applies to at RateKBps.
	Bandwidth = "bandwidth"
	// Reset resets (TCP RST) every connection as soon as data crosses it.
	Reset = "reset"
)

// Kinds lists the faults a Link takes.
var Kinds = []string{Partition, Blackhole, Delay, Bandwidth, Reset}

// Directions, seen from the member that dials: out is what it sends, in what
// it receives.
const (
	Both = "both"
	Out  = "out"
	In   = "in"
)

// Fault is one way to break a link.
type Fault struct {
	Kind string
	// Direction: Both (the default), Out or In. Blackhole is always In; Reset
	// applies to the connection.
	Direction string
	// Latency and Jitter of Delay (latency +/- jitter, uniform, per chunk of data).
	Latency, Jitter time.Duration
	// RateKBps of Bandwidth, in KB/s.
	RateKBps int64
}

// Validate checks f.
func (f Fault) Validate() error {
	if !slices.Contains(Kinds, f.Kind) {
		return fmt.Errorf("netfault: kind %q is not one of %v", f.Kind, Kinds)
	}
	if f.Direction != "" && f.Direction != Both && f.Direction != Out && f.Direction != In {
		return fmt.Errorf("netfault: direction %q is not both, out or in", f.Direction)
	}
	switch f.Kind {
	case Delay:
		if f.Latency <= 0 || f.Jitter < 0 || f.Jitter > f.Latency || f.Latency > time.Minute {
			return errors.New("netfault: delay needs 0 < latency <= 1m and 0 <= jitter <= latency")
		}
	case Bandwidth:
		if f.RateKBps <= 0 {
			return errors.New("netfault: bandwidth needs a rate > 0 KB/s")
		}
	}
	return nil
}

// streams are the toxiproxy streams f applies to: upstream is what the
// dialing member sends, downstream what it receives.
func (f Fault) streams() []string {
	switch {
	case f.Kind == Blackhole, f.Kind == Reset:
		return []string{"downstream"}
	case f.Direction == Out:
		return []string{"upstream"}
	case f.Direction == In:
		return []string{"downstream"}
	}
	return []string{"upstream", "downstream"}
}

func (f Fault) toxic(stream string) (name string, body []byte) {
	var typ string
	var attrs map[string]int64
	switch f.Kind {
	case Partition, Blackhole:
		typ, attrs = "timeout", map[string]int64{"timeout": 0} // drop, never close
	case Delay:
		typ, attrs = "latency", map[string]int64{"latency": f.Latency.Milliseconds(), "jitter": f.Jitter.Milliseconds()}
	case Bandwidth:
		typ, attrs = "bandwidth", map[string]int64{"rate": f.RateKBps}
	case Reset:
		typ, attrs = "reset_peer", map[string]int64{"timeout": 0}
	}
	name = f.Kind + "-" + stream
	body, _ = json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
	return name, body
}

// Links holds a fleet's links.
type Links struct {
	srv   *toxiproxy.ApiServer
	mu    sync.Mutex
	links map[string]*Link
}

// New makes an empty set of links. It quiets toxiproxy's global logger (it
// logs every connection) to warnings.
func New() *Links {
	zerolog.SetGlobalLevel(zerolog.WarnLevel)
	return &Links{srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()), links: map[string]*Link{}}
}

// Link is one relay: Listen is what the member dials, Upstream its peer.
type Link struct {
	Name     string
	Listen   string
	Upstream string
	p        *toxiproxy.Proxy

	mu     sync.Mutex
	faults map[string]Fault // by kind
}

// Add starts a link named name to upstream, listening on a free loopback port.
func (ls *Links) Add(name, upstream string) (*Link, error) {
	return ls.AddAt(name, "127.0.0.1:0", upstream)
}

// AddAt is Add on a given listen address (host:port; port 0: a free one).
func (ls *Links) AddAt(name, listen, upstream string) (*Link, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if _, ok := ls.links[name]; ok {
		return nil, fmt.Errorf("netfault: link %q exists", name)
	}
	p := toxiproxy.NewProxy(ls.srv, name, listen, upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("netfault: link %s (%s -> %s): %w", name, listen, upstream, err)
	}
	l := &Link{Name: name, Listen: p.Listen, Upstream: upstream, p: p, faults: map[string]Fault{}}
	ls.links[name] = l
	return l, nil
}

// Get returns the link named name, or nil.
func (ls *Links) Get(name string) *Link {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.links[name]
}

// All returns every link, by name.
func (ls *Links) All() []*Link {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	out := make([]*Link, 0, len(ls.links))
	for _, l := range ls.links {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close stops every link (their connections close).
func (ls *Links) Close() {
	for _, l := range ls.All() {
		l.p.Stop()
	}
}

// Apply adds f to the link, replacing a fault of the same kind.
func (l *Link) Apply(f Fault) error {
	if err := f.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.faults[f.Kind]; ok {
		l.removeLocked(f.Kind)
	}
	for _, s := range f.streams() {
		_, body := f.toxic(s)
		if _, err := l.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
			l.removeLocked(f.Kind)
			return fmt.Errorf("netfault: %s on %s: %w", f.Kind, l.Name, err)
		}
	}
	l.faults[f.Kind] = f
	return nil
}

func (l *Link) removeLocked(kind string) {
	f := l.faults[kind]
	f.Kind = kind
	for _, s := range []string{"upstream", "downstream"} {
		name, _ := f.toxic(s)
		_ = l.p.Toxics.RemoveToxic(context.Background(), name) // absent: nothing to do
	}
	delete(l.faults, kind)
}

// Heal removes every fault. Connections a partition or blackhole held are
// closed (toxiproxy ends them when the toxic goes), so the member redials at
// once instead of waiting for its own timeout.
func (l *Link) Heal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.faults {
		l.removeLocked(k)
	}
}

// Faults lists the kinds of fault on the link now.
func (l *Link) Faults() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.faults))
	for k := range l.faults {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
