package analytics_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/analytics"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/waitfor"
)

// TestActivityIntervals: counts are summed over EveryActivity and emitted once
// per interval (connections per proxy, notes per class); classes past the
// bound count under "(other)"; the merger sums each record once, dropping a
// duplicate (at-least-once) by its id.
func TestActivityIntervals(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{})
	g := consume(t, c)
	now := time.Unix(5000, 0)
	a := analytics.NewActivity(p, "proxy/p1", func() time.Time { return now })
	a.Connections(10, 10, nil, map[string]uint64{"capacity": 2})
	now = now.Add(time.Second)
	a.Connections(12, 3, map[string]uint64{"1012": 1}, nil)
	for i := range 300 { // 300 classes: 256 named, the rest "(other)"
		a.Note(analytics.NoteClass{Type: fmt.Sprintf("t%03d", i), Priority: "normal"}, analytics.Notes{Pushed: 2, Acked: 1})
	}
	a.Tick() // 1 s in: nothing yet
	now = now.Add(analytics.EveryActivity)
	a.Connections(11, 1, map[string]uint64{"closed": 2}, nil) // 11 s: the interval ends here
	waitfor.True(t, 10*time.Second, "1 connections record and 257 notes records", func() bool { return g.n() == 1+257 })
	m := analytics.NewMerger()
	for _, v := range g.values {
		if err := m.Add(v); err != nil {
			t.Fatal(err)
		}
		if err := m.Add(v); err != nil { // a duplicate counts once
			t.Fatal(err)
		}
	}
	tot, notes := m.Totals()
	if tot.Connects != 14 || tot.Connections["proxy/p1"] != 11 || tot.Refused["capacity"] != 2 || tot.Disconnects["1012"] != 1 || tot.Disconnects["closed"] != 2 {
		t.Fatalf("connection totals %+v", tot)
	}
	if len(notes) != 257 {
		t.Fatalf("%d note classes, want 256 and (other)", len(notes))
	}
	for _, n := range notes {
		want := analytics.Notes{Pushed: 2, Acked: 1}
		if n.Type == "(other)" {
			want = analytics.Notes{Pushed: 2 * 44, Acked: 44}
		}
		if n.Pushed != want.Pushed || n.Acked != want.Acked || n.IntervalMS != 11000 {
			t.Fatalf("class %+v, want %+v over 11 s", n, want)
		}
	}
	// the connections record (topics are read in no set order between them)
	conns := 0
	for _, v := range g.values {
		var r struct {
			analytics.Record
			Data analytics.Connections `json:"data"`
		}
		if err := json.Unmarshal(v, &r); err != nil {
			t.Fatal(err)
		}
		if r.Type == "connections" {
			conns++
			if r.Data.Proxy != "proxy/p1" || r.Data.IntervalMS != 11000 {
				t.Fatalf("connections record %s", v)
			}
		}
	}
	if conns != 1 {
		t.Fatalf("%d connections records, want 1", conns)
	}
	if a := (*analytics.Activity)(nil); true {
		a.Connections(1, 1, nil, nil) // nil: a no-op (analytics off)
		a.Note(analytics.NoteClass{}, analytics.Notes{})
		a.Flush()
	}
}

// TestDeliveryCells: a version's counts per (platform, segment) cell become
// the record's cells, its platform shares (their sums, with the platform's
// coarse latency buckets) and its catch-ups; the merger adds them over
// proxies.
func TestDeliveryCells(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{})
	g := consume(t, c)
	now := time.Unix(1000, 0)
	xs := map[string]*analytics.DeliveryExporter{} // one exporter per proxy, as each proxy has its own
	rep := func(proxy string, moving bool) engine.DeliveryReport {
		ed := engine.EventDelivery{Event: "ev", Devices: 6, DeviceCells: []engine.CellDevices{
			{Platform: "tv", Segment: "eu", Devices: 3}, {Platform: "tv", Segment: "", Devices: 1}, {Platform: "web", Segment: "eu", Devices: 2}}}
		if moving {
			ed.Versions = []engine.VersionDelivery{{V: 7, Sent: 6, Acked: 5, Latency: []engine.Bucket{{UpperMS: 90, Count: 6}},
				Cells: []engine.CellCount{{Platform: "tv", Segment: "eu", Sent: 3, Acked: 3, CatchUps: 1}, {Platform: "tv", Sent: 1, Acked: 1},
					{Platform: "web", Segment: "eu", Sent: 2, Acked: 1, CatchUps: 2}},
				PlatformLatency: map[string][]engine.Bucket{"tv": {{UpperMS: 100, Count: 4}}, "web": {{UpperMS: 250, Count: 2}}}}}
		}
		return engine.DeliveryReport{Proxy: proxy, AtMS: now.UnixMilli(), Events: []engine.EventDelivery{ed}}
	}
	for _, proxy := range []string{"p1", "p2"} {
		xs[proxy] = analytics.NewDeliveryExporter(p, func() time.Time { return now })
		xs[proxy].Observe(rep(proxy, true))
	}
	now = now.Add(time.Second)
	for _, proxy := range []string{"p1", "p2"} {
		xs[proxy].Observe(rep(proxy, false)) // settled
	}
	waitfor.True(t, 10*time.Second, "2 settled records", func() bool { return g.n() == 2 })
	var r struct {
		Data analytics.Delivery `json:"data"`
	}
	if err := json.Unmarshal(g.values[0], &r); err != nil {
		t.Fatal(err)
	}
	if d := r.Data; d.CatchUps != 3 || len(d.Cells) != 3 || d.Platforms["tv"].Devices != 4 || d.Platforms["tv"].Sent != 4 ||
		d.Platforms["web"].CatchUps != 2 || len(d.Platforms["tv"].Latency) != 1 || d.Platforms["web"].Latency[0].UpperMS != 250 {
		t.Fatalf("record %+v", d)
	}
	m := analytics.NewMerger()
	for _, v := range g.values {
		if err := m.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	vs := m.Versions("ev")
	if len(vs) != 1 {
		t.Fatalf("versions %+v", vs)
	}
	v := vs[0]
	tv, eu := v.Platforms["tv"], v.Cells["web/eu"]
	if v.CatchUps != 6 || tv.Devices != 8 || tv.Sent != 8 || tv.SentPct != 100 || *tv.SentMS["p50"] != 100 ||
		eu.Devices != 4 || eu.Acked != 2 || eu.AckedPct != 50 || v.Cells["tv/"].Devices != 2 {
		t.Fatalf("merged %+v", v)
	}
}

// TestNoteExpiries: a stored notification counts as accepted at once and as
// expired (with its inbox copies) in the interval that passes the end of the
// minute its TTL runs out; past the bound on tracked minutes, it counts as
// untracked, never as expired.
func TestNoteExpiries(t *testing.T) {
	c := broker(t)
	p := producer(t, c, analytics.Config{})
	g := consume(t, c)
	now := time.Unix(6000, 0) // minute 100 begins
	a := analytics.NewActivity(p, "broadcaster/b1", func() time.Time { return now })
	goal := analytics.NoteClass{Type: "goal", Priority: "high"}
	a.Stored(goal, 3, 1, 4, now.Add(30*time.Second)) // expires in minute 100 (ends at 6060 s)
	a.Stored(goal, 1, 0, 1, now.Add(90*time.Second)) // minute 101
	a.Flush()                                        // accepted 2, nothing expired
	now = now.Add(61 * time.Second)
	a.Flush() // minute 100 is over: 1 expired with 4 inboxes
	now = now.Add(60 * time.Second)
	a.Flush() // minute 101: 1 more
	waitfor.True(t, 10*time.Second, "3 notes records", func() bool { return g.n() == 3 })
	var recs []analytics.Notes
	for _, v := range g.values {
		var r struct {
			Data analytics.Notes `json:"data"`
		}
		if err := json.Unmarshal(v, &r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r.Data)
	}
	if recs[0].Accepted != 2 || recs[0].Members != 4 || recs[0].Expired != 0 ||
		recs[1].Expired != 1 || recs[1].ExpiredInboxes != 4 || recs[1].Accepted != 0 ||
		recs[2].Expired != 1 || recs[2].ExpiredInboxes != 1 {
		t.Fatalf("records %+v", recs)
	}
}
