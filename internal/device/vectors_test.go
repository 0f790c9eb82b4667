package device_test

import (
	"encoding/json"
	"math"
	"os"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/wire"
)

// TestSharedVectors: the Go client keeps the behaviour the TypeScript SDK is
// held to (sdk/testdata/vectors.json, read by both test suites): backoff,
// refetch slots, redirect rules, defaults.
func TestSharedVectors(t *testing.T) {
	raw, err := os.ReadFile("../../sdk/testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Defaults map[string]int64 `json:"defaults"`
		Backoff  []struct {
			K    int
			Base int64   `json:"base_ms"`
			Cap  int64   `json:"cap_ms"`
			U    float64 `json:"u"`
			Want float64 `json:"want_ms"`
		} `json:"backoff"`
		Slots []struct {
			Device string `json:"device"`
			Window int64  `json:"window_ms"`
			Slots  int    `json:"slots"`
			Want   int64  `json:"want_ms"`
		} `json:"refetch_slot"`
		Redirect []struct {
			Current, To       string
			Configured, Allow []string
			Want              bool
		} `json:"redirect"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	ms := time.Millisecond
	for _, b := range v.Backoff {
		got := float64(device.Backoff(b.K, time.Duration(b.Base)*ms, time.Duration(b.Cap)*ms, b.U)) / float64(ms)
		if math.Abs(got-b.Want) > 1e-6 {
			t.Errorf("Backoff(%d, %d, %d, %v) = %v ms, vector %v", b.K, b.Base, b.Cap, b.U, got, b.Want)
		}
	}
	for _, s := range v.Slots {
		if got := wire.RefetchDelay(s.Device, time.Duration(s.Window)*ms, s.Slots).Milliseconds(); got != s.Want {
			t.Errorf("RefetchDelay(%q) = %d ms, vector %d", s.Device, got, s.Want)
		}
	}
	for _, r := range v.Redirect {
		if got := wire.RedirectAllowed(r.Current, r.To, r.Configured, r.Allow); got != r.Want {
			t.Errorf("RedirectAllowed(%s -> %s, %v) = %v, vector %v", r.Current, r.To, r.Allow, got, r.Want)
		}
	}
	c, err := device.New(device.Config{URLs: []string{"ws://x/v1/ws"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Config().ResubDelay != time.Duration(v.Defaults["resub_delay_ms"])*ms {
		t.Errorf("resub delay %v, vector %d ms", c.Config().ResubDelay, v.Defaults["resub_delay_ms"])
	}
	if c.Config().BackoffBase != time.Duration(v.Defaults["backoff_base_ms"])*ms || c.Config().BackoffCap != time.Duration(v.Defaults["backoff_cap_ms"])*ms {
		t.Errorf("defaults %v / %v, vectors %d / %d ms", c.Config().BackoffBase, c.Config().BackoffCap, v.Defaults["backoff_base_ms"], v.Defaults["backoff_cap_ms"])
	}
	p, err := device.NewPrefetcher(device.PrefetchConfig{URL: "http://x/graphql", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	pc := p.Config()
	for name, got := range map[string]time.Duration{"prefetch_backoff_base_ms": pc.BackoffBase, "prefetch_backoff_cap_ms": pc.BackoffCap,
		"refetch_window_ms": pc.RefetchWindow, "miss_delay_max_ms": pc.MissDelayMax} {
		if got != time.Duration(v.Defaults[name])*ms {
			t.Errorf("%s: Go default %v, vector %d ms", name, got, v.Defaults[name])
		}
	}
	if pc.RefetchSlots != int(v.Defaults["refetch_slots"]) {
		t.Errorf("refetch slots %d, vector %d", pc.RefetchSlots, v.Defaults["refetch_slots"])
	}
}
