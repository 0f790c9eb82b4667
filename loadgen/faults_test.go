package loadgen

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The recovery model against the closed forms of shared/loadgen-notes.md.
func TestRecoveryModel(t *testing.T) {
	within := func(name string, got, want, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol*want {
			t.Errorf("%s: %.3f, want %.3f (+-%.0f%%)", name, got, want, tol*100)
		}
	}
	// Admission never binds: the first wave, U(0, base), is all there is.
	secs, peak := RecoveryModel{Devices: 10000, Base: 0.5, Cap: 30, Admit: 1e9, Burst: 1e9}.Recovery()
	within("recovery, unlimited admission", secs, 0.5, 0.02)
	within("first-wave peak N/b0", peak, 10000/0.5, 0.02)
	// Admission binds: the survivors take the burst at once, then at most Admit
	// per second, so recovery takes at least (N - burst) / Admit; with the
	// backoff doubling, devices wait while admission idles: at most one cap
	// window more. More admission is faster.
	secs, _ = RecoveryModel{Devices: 100000, Base: 0.5, Cap: 30, Admit: 4000, Burst: 4000}.Recovery()
	if lo := (100000 - 4000) / 4000.0; secs < lo || secs > lo+30 {
		t.Errorf("recovery, admission-bound: %.1f s, want within [%.0f, %.0f]", secs, lo, lo+30)
	}
	faster, _ := RecoveryModel{Devices: 100000, Base: 0.5, Cap: 30, Admit: 8000, Burst: 8000}.Recovery()
	if faster >= secs {
		t.Errorf("twice the admission rate: %.1f s, not faster than %.1f s", faster, secs)
	}
	// A drain: told over the window, then after U(0, jitter).
	secs, _ = RecoveryModel{Devices: 5000, Base: 0.5, Cap: 30, Admit: 1e9, Burst: 1e9, Window: 3, Jitter: 2}.Recovery()
	within("recovery, drain", secs, 5, 0.05)
}

// simulate models a proxy kill at full scale: how long until everyone is back,
// and the peak that reaches the survivors.
func TestSimulateProxyKill(t *testing.T) {
	sc := base(10_000_000)
	sc.Fleet.Proxies = 50
	sc.Faults = []Fault{{At: Duration(3600e9), Action: "proxy-kill", Target: "random", BackoffBase: Duration(500e6), BackoffCap: Duration(30e9)}}
	r := Simulate(sc, SimOptions{})
	if len(r.Faults) != 1 {
		t.Fatalf("faults %+v", r.Faults)
	}
	f := r.Faults[0]
	// 200,000 devices to 49 survivors admitting 2,000/s each (burst 2,000):
	// at least (200,000 - 98,000) / 98,000 per second = 1.04 s.
	if f.DevicesAffected != 200_000 || f.RecoveredMS < 1040 || f.RecoveredMS > 30000 {
		t.Fatalf("proxy kill: %+v, want 200,000 devices back in 1.04-30 s", f)
	}
	if f.ReconnectPeakPerS < 200_000/0.5*0.95 {
		t.Fatalf("reconnect peak %.0f/s, want at least the first wave N/b0 = 400,000/s", f.ReconnectPeakPerS)
	}
}

// A proxy partitioned from Redis: its share of the devices is stale from a
// change made during the cut until the heal, then caught up (pub/sub time +
// share / fanout rate); it notices after 1.5 probe intervals + 3 s; a
// partition with no change during it leaves nobody stale; a partition of the
// devices' way in or of a broadcaster is not this model.
func TestSimulatePartitionedProxy(t *testing.T) {
	sc := base(1_000_000)
	sc.Fleet.Proxies = 10
	cut := Fault{At: Duration(1800e9 - 10e9), Action: "partition", Member: "proxy", Link: "redis", Duration: Duration(60e9)}
	sc.Faults = []Fault{cut}
	f := Simulate(sc, SimOptions{}).Faults[0]
	// 100,000 devices per proxy at 50,000 deliveries/s: 2 s after the heal, + 2 ms of pub/sub.
	if f.DevicesAffected != 100_000 || f.HealedMS != 60000 || f.RecoveredAfterHealMS != 2002 || f.RecoveredMS != 62002 || f.NoticedMS != 4500 {
		t.Fatalf("partition: %+v", f)
	}
	// Compressed 10x (a live run's time scale), 6 s of real cut span 60 s of
	// scenario time: the change at 30m is inside it.
	sc.Faults[0].Duration = Duration(6e9)
	if f := Simulate(sc, SimOptions{TimeScale: 10}).Faults[0]; f.RecoveredMS != 6000+2002 {
		t.Fatalf("compressed partition: %+v", f)
	}
	if f := Simulate(sc, SimOptions{}).Faults[0]; f.RecoveredMS != 0 {
		t.Fatalf("a 6 s partition with no change in it: %+v, want recovered at once", f)
	}
	for _, other := range []Fault{{Action: "partition", Link: "devices", Duration: Duration(60e9)}, {Action: "partition", Member: "broadcaster", Duration: Duration(60e9)},
		{Action: "delay", Latency: Duration(3e8), Duration: Duration(60e9)}} {
		other.At = cut.At
		sc.Faults = []Fault{other}
		if f := Simulate(sc, SimOptions{}).Faults[0]; f.RecoveredMS != 0 || f.DevicesAffected != 0 {
			t.Errorf("%+v modelled as a cut proxy: %+v", other, f)
		}
	}
}

// A connect storm (19,500 devices at once on one proxy admitting 2,000/s,
// burst 2,000, Retry-After 5-10 s): everyone is in no sooner than the
// admission bound, (19,500 - 2,000) / 2,000 = 8.75 s, nor than the first
// Retry-After (5 s); a longer ramp is not a storm (0).
func TestSimulateConnectStorm(t *testing.T) {
	sc := base(19_500)
	sc.Fleet.Proxies = 1
	sc.Connect.Ramp = 0
	r := Simulate(sc, SimOptions{})
	if r.AllConnectedS < 8.75 || r.AllConnectedS > 40 {
		t.Fatalf("storm: everyone in after %.2f s, want between 8.75 s and 40 s", r.AllConnectedS)
	}
	sc.Fleet.RetryAfter = Duration(2e9)
	if r2 := Simulate(sc, SimOptions{}); r2.AllConnectedS >= r.AllConnectedS || r2.AllConnectedS < 8.75 {
		t.Fatalf("a shorter Retry-After: %.2f s (5 s: %.2f s), want sooner, still >= 8.75 s", r2.AllConnectedS, r.AllConnectedS)
	}
	sc.Devices = 1_500 // within the burst: at once
	if r3 := Simulate(sc, SimOptions{}); r3.AllConnectedS > 0.1 {
		t.Fatalf("1,500 devices within a 2,000 burst: %.2f s", r3.AllConnectedS)
	}
	sc.Connect.Ramp = Duration(10 * 60e9)
	if r4 := Simulate(sc, SimOptions{}); r4.AllConnectedS != 0 {
		t.Fatalf("a 10-minute ramp modelled as a storm: %.2f s", r4.AllConnectedS)
	}
}

// The report marks every fault on every timeline plot and lists it.
func TestReportMarksFaults(t *testing.T) {
	sc := base(100_000)
	sc.Fleet.Proxies = 5
	sc.Faults = []Fault{
		{At: Duration(1800e9), Action: "proxy-drain", Target: "random", Window: Duration(3e9), BackoffBase: Duration(500e6), BackoffCap: Duration(30e9)},
		{At: Duration(3600e9), Action: "proxy-kill", Target: "0", BackoffBase: Duration(500e6), BackoffCap: Duration(30e9)},
	}
	r := Simulate(sc, SimOptions{})
	dir := t.TempDir()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	// Three timeline plots (connected, reconnects, prefetch), each labelling both faults.
	for _, label := range []string{"proxy-drain", "proxy-kill"} {
		if n := strings.Count(html, ">"+label); n < 3 {
			t.Fatalf("%s labelled %d times, want on each of the 3 timelines", label, n)
		}
	}
	if !strings.Contains(html, "<h2>Faults</h2>") || !strings.Contains(html, "proxy-kill") {
		t.Fatal("no faults table")
	}
}
