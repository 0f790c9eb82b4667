package loadgen

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestExampleScenariosParse(t *testing.T) {
	for _, f := range []string{"scenarios/fight-night.yaml", "scenarios/nfl-christmas.json"} {
		sc, err := LoadScenario(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if sc.Devices <= 0 || len(sc.Stages) < 3 {
			t.Fatalf("%s: %+v", f, sc)
		}
	}
}

func TestScenarioErrorsNameLineAndField(t *testing.T) {
	cases := map[string]string{
		"name: x\nduration: 1h\ndevices: 10\nstagez: []\n":                                                                                         "line 4: field stagez not found",
		"name: x\nduration: soon\ndevices: 10\n":                                                                                                   `line 2: "soon" is not a duration`,
		"name: x\nduration: 1h\ndevices: 0\nstages: [{at: 1s, stage: a}]\n":                                                                        "line 3: devices: must be > 0",
		"name: x\nduration: 1h\ndevices: 5\nstages:\n  - {at: 1s, stage: a}\n  - {at: 2h, stage: b}\n":                                             "line 6: stages[1].at",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: Bad Id}]\n":                                                                   "line 4: stages[0].stage",
		"name: x\nduration: 1h\ndevices: 5\nplatforms: {tv: 0.5, web: 0.2}\nstages: [{at: 1s, stage: a}]\n":                                        "line 4: platforms: shares add up to 0.700",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nprefetch:\n  jitter: 1.5\n":                                              "line 6: prefetch.jitter",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\ndrops:\n  - {at: 1s, fraction: 2}\n":                                     "line 6: drops[0].fraction",
		"{\"name\": \"x\", \"duration\": \"1h\", \"devices\": 5, \"stages\": [{\"at\": \"1s\", \"stage\": \"a\"}], \"fleet\": {\"capacity\": -1}}": "fleet",
		"name: [\n": "not YAML or JSON",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: partition, direction: sideways}\n": "line 6: faults[0].direction",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: delay}\n":                          "line 6: faults[0].latency",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: bandwidth, link: devices}\n":       "faults[0].rate_kbps",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: partition, link: moon}\n":          "faults[0].link",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: proxy-kill, link: redis}\n":        "are for network faults",
		"name: x\nduration: 1h\ndevices: 5\nstages: [{at: 1s, stage: a}]\nfaults:\n  - {at: 1s, action: partition, duration: 1h}\n":        "faults[0].duration",
	}
	for in, want := range cases {
		_, err := ParseScenario([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n  err = %v\n  want it to contain %q", in, err, want)
		}
	}
}

func base(devices int64) *Scenario {
	sc, err := ParseScenario([]byte(`
name: t
duration: 2h
devices: 1
stages: [{at: 30m, stage: a}]
fleet: {proxies: 1, capacity: 100000000, fanout_rate: 50000}
network: {pubsub: 2ms, device_p50: 10ms, device_p99: 10ms}
`))
	if err != nil {
		panic(err)
	}
	sc.Devices = devices
	return sc
}

// One proxy, no loss, constant delay: completion = hop + devices/rate + delay.
func TestSimulateOneProxyClosedForm(t *testing.T) {
	sc := base(100000)
	r := Simulate(sc, SimOptions{})
	b := r.Broadcasts[0]
	want := (0.002 + 100000.0/50000 + 0.010) * 1000
	if math.Abs(b.T100MS-want) > 1 {
		t.Fatalf("t100 = %.1f ms, want %.1f", b.T100MS, want)
	}
	if half := (0.002 + 50000.0/50000 + 0.010) * 1000; math.Abs(b.T50MS-half) > 5 {
		t.Fatalf("t50 = %.1f ms, want %.1f", b.T50MS, half)
	}
	if b.Missed != 0 || b.Devices != 100000 {
		t.Fatalf("%+v", b)
	}
	// Ten proxies share the load: ten times faster.
	r10 := Simulate(sc, SimOptions{Proxies: 10})
	if got, want := r10.Broadcasts[0].T100MS, (0.002+10000.0/50000+0.010)*1000; math.Abs(got-want) > 1 {
		t.Fatalf("10 proxies: t100 %.1f, want %.1f", got, want)
	}
}

// Capacity overflow: devices beyond proxies x capacity are missed.
func TestSimulateCapacity(t *testing.T) {
	sc := base(1000)
	sc.Fleet.Capacity = 300
	r := Simulate(sc, SimOptions{Proxies: 2})
	if b := r.Broadcasts[0]; b.Missed != 400 {
		t.Fatalf("missed %d, want 400", b.Missed)
	}
	if r.ProxiesNeeded != 4 {
		t.Fatalf("proxies needed %d, want 4", r.ProxiesNeeded)
	}
}

// An instant fill with a fixed TTL comes back as a burst of N every T; with
// TTL ~ T x U(1-j, 1+j) (refresh at expiry) the first wave is flat at N/(2jT).
func TestSimulatePrefetchHerd(t *testing.T) {
	sc := base(1_000_000)
	sc.Prefetch = Prefetch{TTL: Duration(300e9), Jitter: 0.5, RefreshLo: 1, RefreshHi: 1}
	r := Simulate(sc, SimOptions{})
	ps := r.Series.PrefetchRPS
	// Series are per-second (2h = 7200 points > 1000: downsampled by max over
	// 8 s buckets). Check the first wave alone: (150 s, 300 s).
	flat := 1_000_000.0 / 300
	for _, p := range ps {
		if p.T > 160 && p.T < 290 && math.Abs(p.V-flat)/flat > 0.01 { // the second wave starts at 2 x 150 s
			t.Fatalf("first wave at %vs = %.0f/s, want flat %.0f/s", p.T, p.V, flat)
		}
	}
	if r.NoJitter == nil || math.Abs(r.NoJitter.PeakRPS-1_000_000) > 1 {
		t.Fatalf("no-jitter peak = %+v, want all 1,000,000 in one second", r.NoJitter)
	}
	if ratio := r.NoJitter.Ratio; ratio < 100 {
		t.Fatalf("herd ratio %.1f: jitter should cut the peak by two orders of magnitude", ratio)
	}
}

// A fixed TTL shifts a linear fill by T, forever: the expiry rate equals the fill rate.
func TestSimulateFixedTTLShiftsFill(t *testing.T) {
	sc := base(720_000)
	sc.Connect = Connect{Start: 0, Ramp: Duration(600e9)}
	sc.Prefetch = Prefetch{TTL: Duration(300e9), NoJitter: true}
	a := rampArrivals(720_000, 0, 600, 7200)
	p := renewal(a, refreshKernel(sc.Prefetch, true))
	for _, tt := range []int{350, 450, 599} {
		if want := a[tt] + a[tt-300]; math.Abs(p[tt]-want) > 1e-6*want {
			t.Fatalf("t=%d: %.1f, want fill + fill shifted by T = %.1f", tt, p[tt], want)
		}
	}
}

// Drops: the dropped devices come back uniformly over the first backoff window.
func TestSimulateDropReconnects(t *testing.T) {
	sc := base(100_000)
	sc.Drops = []Drop{{At: Duration(3600e9), Fraction: 0.2, BackoffBase: Duration(10e9), BackoffCap: Duration(30e9)}}
	r := Simulate(sc, SimOptions{})
	// Downsampled by max over 8 s buckets: 20,000 over 10 s is 2,000/s.
	if peak := maxV(r.Series.Reconnects); math.Abs(peak-2000) > 1 {
		t.Fatalf("reconnect peak %.0f/s, want 20,000 over U(0, 10 s) = 2,000/s", peak)
	}
	// Every reconnect falls in the first backoff window after the drop: the
	// buckets holding any start at or after 3,592 s (the 8 s bucket of 3,600)
	// and end before 3,600 + 10 + 8 s.
	var first, last float64 = -1, -1
	for _, p := range r.Series.Reconnects {
		if p.V > 0 {
			if first < 0 {
				first = p.T
			}
			last = p.T
		}
	}
	if first < 3592 || last >= 3618 {
		t.Fatalf("reconnects between %v s and %v s, want within [3592, 3618)", first, last)
	}
}

func maxV(ps []Point) float64 {
	m := 0.0
	for _, p := range ps {
		m = max(m, p.V)
	}
	return m
}

func TestReportFiles(t *testing.T) {
	sc, err := LoadScenario("scenarios/fight-night.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := Simulate(sc, SimOptions{Devices: 100_000})
	dir := t.TempDir()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "report.json"))
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"devices", "connected", "broadcasts", "prefetch", "errors", "wall_seconds", "proxies_needed", "headline"} {
		if _, ok := back[k]; !ok {
			t.Errorf("report.json lacks %q", k)
		}
	}
	bc := back["broadcasts"].([]any)[0].(map[string]any)
	for _, k := range []string{"stage", "v", "t50_ms", "t99_ms", "t100_ms", "missed"} {
		if _, ok := bc[k]; !ok {
			t.Errorf("broadcast lacks %q", k)
		}
	}
	html, _ := os.ReadFile(filepath.Join(dir, "report.html"))
	checkReportStructure(t, string(html), sc)
}

// checkReportStructure is the golden structure of a report: the summary's
// answers, every timeline with time ticks and a labelled marker per stage
// change and drop, one convergence panel per fanout (the arrival-driven first
// stage left out and said so), the latency chart, and nothing fetched from
// outside the file.
func checkReportStructure(t *testing.T, html string, sc *Scenario) {
	t.Helper()
	for _, want := range []string{`id="summary"`, "Every device got every stage", "How fast", "Prefetch: peak", "What jitter saved",
		`aria-label="Connected devices"`, `aria-label="Reconnects per second`, `aria-label="Prefetch requests per second"`,
		"scenario time (h:mm:ss)", "Time to device at", `id="arrival-note"`} {
		if !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, st := range sc.Stages {
		if !strings.Contains(html, ">"+st.Stage+"<") {
			t.Errorf("no marker or label for stage %s", st.Stage)
		}
	}
	for _, d := range sc.Drops {
		if !strings.Contains(html, fmt.Sprintf("drop %.0f%%", 100*d.Fraction)) {
			t.Errorf("no marker for the drop at %v", d.At.D())
		}
	}
	if !strings.Contains(html, "2:00:00") {
		t.Error("no h:mm:ss tick on the timelines")
	}
	fanouts := 0
	for _, st := range sc.Stages {
		if st.At.D() >= sc.Connect.Start.D()+sc.Connect.Ramp.D() {
			fanouts++
		}
	}
	grid := html[strings.Index(html, `<div class="multiples">`):]
	grid = grid[:strings.Index(grid, "</div>")]
	if n := strings.Count(grid, `<svg `); n != fanouts {
		t.Errorf("%d convergence panels, want %d (one per fanout)", n, fanouts)
	}
	for _, bad := range []string{"<script", " src=", "href=\"http", "@import", "url(http"} {
		if strings.Contains(html, bad) {
			t.Errorf("the report references something outside the file: %q", bad)
		}
	}
	if strings.Contains(html, "e+0") {
		t.Error("a number in scientific notation")
	}
}

// The live schedule (DueAt) and the simulator's buckets (rampArrivals) are the
// same arrival model: a linear ramp of the rate, N in all.
func TestArrivalModel(t *testing.T) {
	const n, start, ramp = 100000, 60, 600
	a := rampArrivals(n, start, ramp, 1000)
	var total float64
	for _, v := range a {
		total += v
	}
	if math.Abs(total-n) > 1e-6 {
		t.Fatalf("arrivals total %.3f, want %d", total, n)
	}
	if a[start-1] != 0 || a[start+ramp] != 0 {
		t.Fatal("arrivals outside the ramp")
	}
	// The rate rises linearly: second k of the ramp has (2k+1)/ramp^2 of N.
	for _, k := range []int{0, 100, 599} {
		if want := n * float64(2*k+1) / (ramp * ramp); math.Abs(a[start+k]-want) > 1e-6 {
			t.Fatalf("second %d: %.3f, want %.3f", k, a[start+k], want)
		}
	}
	// Count the live schedule's devices per second: the same curve.
	live := make([]float64, 1000)
	for i := int64(0); i < n; i++ {
		live[int(DueAt(i, n, start*time.Second, ramp*time.Second).Seconds())]++
	}
	for s := start; s < start+ramp; s += 37 {
		if math.Abs(live[s]-a[s]) > 1.5 {
			t.Fatalf("second %d: live schedule %.0f devices, simulator %.1f", s, live[s], a[s])
		}
	}
}

// A changed stage (its digest differs from what devices hold) brings a flat
// refetch curve: 100,000 devices over the 30 s window in their hashed slots,
// every second within 10 % of the mean, every device once.
func TestSimulateChangedStageRefetchIsFlat(t *testing.T) {
	sc := base(100000)
	sc.Stages[0].Changed = true
	r := Simulate(sc, SimOptions{})
	b := r.Broadcasts[0]
	if len(b.Refetch) != 30 {
		t.Fatalf("refetch curve of %d seconds, want 30", len(b.Refetch))
	}
	total := 0.0
	for _, p := range b.Refetch {
		total += p.V
	}
	if math.Abs(total-100000) > 1 || b.RefetchFlatness > 0.10 {
		t.Fatalf("refetches %.0f (want 100000), flatness %.3f (want <= 0.10)", total, b.RefetchFlatness)
	}
	if b.RefetchPeakRPS > 1.1*100000/30 {
		t.Fatalf("refetch peak %.0f/s, want <= %.0f", b.RefetchPeakRPS, 1.1*100000/30)
	}
	// Unchanged stages bring no refetch.
	if r2 := Simulate(base(100000), SimOptions{}); r2.Broadcasts[0].Refetch != nil {
		t.Fatal("an unchanged stage modelled refetches")
	}
}

// Progress fits where it goes: "lines" writes whole lines (no carriage
// returns for a CI log), "none" writes nothing, "bar" redraws.
func TestProgressModes(t *testing.T) {
	var mu sync.Mutex
	devices := []*liveDevice{}
	pps := make([]atomic.Int64, 4)
	bin := func(time.Time) int { return 1 }
	for _, tc := range []struct {
		mode       string
		want, deny string
	}{{"lines", "connected", "\r"}, {"none", "", "connected"}, {"bar", "\r", ""}} {
		var buf strings.Builder
		p := newProgress(&buf, tc.mode, time.Now(), time.Minute)
		p.update(&mu, &devices, pps, bin)
		p.finish()
		out := buf.String()
		if (tc.want != "" && !strings.Contains(out, tc.want)) || (tc.deny != "" && strings.Contains(out, tc.deny)) || (tc.mode == "none" && out != "") {
			t.Errorf("%s: %q", tc.mode, out)
		}
	}
}
