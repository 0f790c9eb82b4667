package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/engine"
)

// TestPrintTail: the table an SRE reads: a version line, a line per
// platform with its p50/p99, a line per segment beneath it, then the
// connection totals and a line per notification class.
func TestPrintTail(t *testing.T) {
	m := analytics.NewMerger()
	add := func(id, typ string, data any) {
		b, err := json.Marshal(analytics.Record{Schema: analytics.SchemaVersion, Type: typ, Source: "proxy/p1", AtMS: 1, ID: id, Event: "ev", Data: data})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	add("a", "delivery", analytics.Delivery{Proxy: "p1", V: 9, Devices: 4, Sent: 4, Acked: 3, CatchUps: 1,
		Latency:   []engine.Bucket{{UpperMS: 20, Count: 4}},
		Platforms: map[string]analytics.Share{"tv": {Devices: 4, Sent: 4, Acked: 3, CatchUps: 1, Latency: []engine.Bucket{{UpperMS: 50, Count: 4}}}},
		Cells:     []analytics.Cell{{Platform: "tv", Segment: "eu", Devices: 3, Sent: 3, Acked: 3, CatchUps: 1}, {Platform: "tv", Devices: 1, Sent: 1}}})
	add("b", "connections", analytics.Connections{Proxy: "proxy/p1", Connections: 4, Connects: 5, Disconnects: map[string]uint64{"1012": 1}})
	add("c", "notes", analytics.Notes{Type: "goal", Priority: "high", Accepted: 1, Members: 4, Pushed: 3, Acked: 2, Pulled: 1})
	var out strings.Builder
	printTail(&out, m, "", false)
	// compare words, not the tabwriter's padding
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		lines = append(lines, strings.Repeat(" ", len(l)-len(strings.TrimLeft(l, " ")))+strings.Join(strings.Fields(l), " "))
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"ev 9 1 4 4 100.0 75.0 20ms 20ms 1\n  tv 4 4 100.0 75.0 50ms 50ms 1\n    (none) 1 1 100.0 0.0 0\n    eu 3 3 100.0 100.0 1\n",
		"connections: 4 on 1 proxies; since the tail started: 5 connects, disconnects 1012=1, refused none",
		"goal high 1 4 0 3 2 1 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}
