package loadgen

import (
	"strings"
	"testing"

	"github.com/HdrHistogram/hdrhistogram-go"
)

func snapshot(values ...int64) *hdrhistogram.Snapshot {
	h := hdrhistogram.New(1, 3_600_000, 3)
	for _, v := range values {
		_ = h.RecordValue(v)
	}
	return h.Export()
}

func mergeScenario(t *testing.T) *Scenario {
	sc, err := ParseScenario([]byte("name: m\nduration: 1h\ndevices: 10\nstages: [{at: 10m, stage: a}, {at: 20m, stage: b}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// Shares merge into one report: counts add up, histograms merge, and "missed"
// counts every share's devices below the version segment 0 assigned.
func TestMerge(t *testing.T) {
	sc := mergeScenario(t)
	lead := &Partial{Segment: 0, Segments: 2, Devices: 5, Connected: 5, Proxies: 1, Versions: []uint64{1, 2},
		Held: map[uint64]int64{2: 4, 1: 1}, Latency: map[uint64]*hdrhistogram.Snapshot{},
		ConnectsPerSec: []int64{5}, PrefetchPerSec: []int64{3, 4}, WallSeconds: 2}
	lead.Latency[2] = snapshot(10, 20, 30, 40)
	other := &Partial{Segment: 1, Segments: 2, Devices: 5, Connected: 4, Held: map[uint64]int64{2: 3, 0: 2},
		Latency: map[uint64]*hdrhistogram.Snapshot{2: snapshot(50, 60, 70)}, ConnectsPerSec: []int64{2, 3},
		PrefetchPerSec: []int64{1}, PrefetchErrors: 1, Errors: 2, WallSeconds: 3}
	r, err := Merge(sc, []*Partial{other, lead})
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != 10 || r.Connected != 9 || r.Errors != 2 || r.Prefetch.Errors != 1 || r.WallSeconds != 3 {
		t.Fatalf("totals %+v", r)
	}
	if r.Prefetch.Requests != 8 || r.Prefetch.PeakRPS != 4 {
		t.Fatalf("prefetch %+v (want 8 requests, peak 4/s: per-second counts add across shares)", r.Prefetch)
	}
	b := r.Broadcasts[1]
	if b.V != 2 || b.Missed != 3 { // 1 device on v1 in segment 0, 2 on nothing in segment 1
		t.Fatalf("broadcast b: v%d missed %d, want v2 missed 3", b.V, b.Missed)
	}
	if b.T100MS < 69 || b.T100MS > 71 || b.T50MS < 39 || b.T50MS > 41 {
		t.Fatalf("merged latencies t50 %.0f t100 %.0f, want 40 and 70", b.T50MS, b.T100MS)
	}
	if _, err := Merge(sc, []*Partial{other}); err == nil {
		t.Fatal("merge without segment 0 accepted")
	}
	if _, err := Merge(sc, []*Partial{lead}); err == nil || !strings.Contains(err.Error(), "1 of 2 shares") {
		t.Fatalf("merge of 1 of 2 shares: %v", err)
	}
	three := *other
	three.Segments = 3
	if _, err := Merge(sc, []*Partial{lead, &three}); err == nil {
		t.Fatal("merge of shares from different splits accepted")
	}
	if _, err := Merge(sc, []*Partial{lead, lead}); err == nil {
		t.Fatal("merge with two segment-0 shares accepted")
	}
}

func TestParseIPRange(t *testing.T) {
	got, err := ParseIPRange("127.0.0.2-127.0.0.4")
	if err != nil || len(got) != 3 || got[0] != "127.0.0.2" || got[2] != "127.0.0.4" {
		t.Fatalf("%v %v", got, err)
	}
	if got, err := ParseIPRange("127.0.0.9"); err != nil || len(got) != 1 {
		t.Fatalf("single: %v %v", got, err)
	}
	if got, err := ParseIPRange(""); err != nil || got != nil {
		t.Fatalf("empty: %v %v", got, err)
	}
	for _, bad := range []string{"10.0.0.1-10.0.0.5", "127.0.0.5-127.0.0.2", "127.0.0.1-127.0.1.3", "127.0.0.x", "127.0.0.1-127.0.0.255"} {
		if _, err := ParseIPRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
