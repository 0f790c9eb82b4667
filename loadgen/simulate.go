package loadgen

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/chart"
	"github.com/stagecast/stagecast/internal/wire"
)

// SimOptions override a scenario for a simulation run.
type SimOptions struct {
	Devices  int64 // > 0 overrides the scenario's population
	Proxies  int   // > 0 overrides the fleet size (else the scenario's, else what is needed)
	NoJitter bool  // exact TTLs and refreshes (shows the herd)
	// Calibration, when set, replaces the fleet's fanout rate and the network
	// delay model with figures measured by a live run.
	Calibration *Calibration
	// TimeScale is the live run's, when comparing with one: faults' real-time
	// durations (a partition's) span TimeScale times as much scenario time.
	// Default 1.
	TimeScale float64
}

// Calibration is what a live run measured (see Report.Calibration).
type Calibration struct {
	FanoutRate float64 `json:"fanout_rate"`   // deliveries per second per proxy
	DeviceP50  float64 `json:"device_p50_ms"` // last-mile delay
	DeviceP99  float64 `json:"device_p99_ms"`
	PubSubMS   float64 `json:"pubsub_ms"`
}

// Simulate runs sc at full scale on aggregate buckets (one per second for
// connections and prefetch; analytic delivery curves per broadcast).
func Simulate(sc *Scenario, o SimOptions) *Report {
	start := time.Now()
	n := float64(sc.Devices)
	if o.Devices > 0 {
		n = float64(o.Devices)
	}
	T := int(math.Ceil(sc.Duration.D().Seconds()))
	fleet, net := sc.Fleet, sc.Network
	pubsub := net.PubSub.D().Seconds()
	p50, p99 := net.DeviceP50.D().Seconds(), net.DeviceP99.D().Seconds()
	if c := o.Calibration; c != nil {
		if c.FanoutRate > 0 {
			fleet.FanoutRate = c.FanoutRate
		}
		if c.DeviceP50 > 0 {
			p50 = c.DeviceP50 / 1000
		}
		if c.DeviceP99 >= c.DeviceP50 && c.DeviceP99 > 0 {
			p99 = c.DeviceP99 / 1000
		}
		if c.PubSubMS > 0 {
			pubsub = c.PubSubMS / 1000
		}
	}

	arrivals := rampArrivals(n, sc.Connect.Start.D().Seconds(), sc.Connect.Ramp.D().Seconds(), T)
	connected := make([]float64, T)
	reconnects := make([]float64, T)
	var sum float64
	for t := 0; t < T; t++ {
		sum += arrivals[t]
		connected[t] = sum
	}
	for _, d := range sc.Drops {
		at := int(d.At.D().Seconds())
		if at >= T {
			continue
		}
		dropped := d.Fraction * connected[at]
		// First attempt after U(0, base): uniform over [at, at+base].
		spread(reconnects, at, d.BackoffBase.D().Seconds(), dropped)
		back := make([]float64, T)
		spread(back, at, d.BackoffBase.D().Seconds(), dropped)
		var gone, cum float64
		for t := at; t < T; t++ {
			cum += back[t]
			gone = dropped - cum
			connected[t] -= max(gone, 0)
		}
	}
	proxies := fleet.Proxies
	if o.Proxies > 0 {
		proxies = o.Proxies
	}
	peak := 0.0
	for _, c := range connected {
		peak = max(peak, c)
	}
	needed := int(math.Ceil(peak / float64(fleet.Capacity)))
	if proxies == 0 {
		proxies = max(needed, 1)
	}
	var faults []FaultStats
	for _, f := range sc.Faults {
		at := int(f.At.D().Seconds())
		if at >= T {
			continue
		}
		fs := FaultStats{AtS: f.At.D().Seconds(), Action: f.Action, Target: f.Target}
		if m, ok := proxyLoss(f, connected[at], proxies, fleet); ok {
			secs, peak := m.Recovery()
			spread(reconnects, at, math.Max(secs, 1), m.Devices)
			fs.DevicesAffected, fs.Reconnects = int64(m.Devices), int64(m.Devices)
			fs.RecoveredMS, fs.ReconnectPeakPerS, fs.PredictedMS = secs*1000, peak, secs*1000
		} else if p, ok := partitionedProxy(sc, f, connected[at], proxies, fleet, pubsub*1000, cmp.Or(o.TimeScale, 1)); ok {
			fs.DevicesAffected = int64(p.devices)
			fs.NoticedMS, fs.HealedMS = p.noticedMS, p.healedMS
			fs.RecoveredMS, fs.RecoveredAfterHealMS, fs.PredictedMS = p.recoveredMS, p.afterHealMS, p.recoveredMS
		}
		faults = append(faults, fs)
	}

	kernel := refreshKernel(sc.Prefetch, o.NoJitter || sc.Prefetch.NoJitter)
	prefetch := renewal(arrivals, kernel)
	var requests, peakRPS float64
	for _, p := range prefetch {
		requests += p
		peakRPS = max(peakRPS, p)
	}
	refreshPeak := peakOfRefreshes(prefetch, arrivals)
	rep := &Report{Mode: "simulate", Scenario: sc.Name, Devices: int64(n), Proxies: proxies, ProxiesNeeded: needed,
		Prefetch: PrefetchStats{Requests: int64(requests), PeakRPS: peakRPS, MeanRPS: requests / float64(T), RefreshPeakRPS: refreshPeak}}
	rep.Connected = int64(connected[T-1])
	rep.Marks, rep.ArrivalEndS = scenarioMarks(sc), (sc.Connect.Start.D() + sc.Connect.Ramp.D()).Seconds()
	rep.Faults = faults
	rep.AllConnectedS = connectStorm(sc, n, proxies, fleet)
	delay := logNormalQuantiles(p50, p99, 400)
	for i, st := range sc.Stages {
		at := min(int(st.At.D().Seconds()), T-1)
		c := connected[at]
		served := min(c, float64(proxies)*float64(fleet.Capacity))
		perProxy := served / float64(proxies)
		b := BroadcastStats{Stage: st.Stage, V: uint64(i + 1), AtS: st.At.D().Seconds(), Devices: int64(c), Missed: int64(math.Round(c - served))}
		cdf := func(tau float64) float64 { return deliveredShare(tau, pubsub, perProxy, fleet.FanoutRate, delay) }
		b.T50MS = quantileTime(cdf, 0.5) * 1000
		b.T99MS = quantileTime(cdf, 0.99) * 1000
		b.T100MS = (pubsub + perProxy/fleet.FanoutRate + delay[len(delay)-1]) * 1000
		for k := 0; k <= 60; k++ {
			tau := b.T100MS / 1000 * float64(k) / 60
			b.Curve = append(b.Curve, Point{T: tau, V: cdf(tau)})
		}
		if st.Changed {
			b.Refetch, b.RefetchPeakRPS, b.RefetchFlatness = refetchCurve(served, int(math.Min(served, refetchSample)), sc.Prefetch.RefetchWindow.D(), sc.Prefetch.RefetchSlots)
			for _, p := range b.Refetch {
				if t := at + int(p.T); t < T {
					prefetch[t] += p.V
				}
			}
		}
		rep.Broadcasts = append(rep.Broadcasts, b)
	}
	requests, peakRPS = 0, 0
	for _, p := range prefetch { // with the refetches of changed stages
		requests += p
		peakRPS = max(peakRPS, p)
	}
	rep.Prefetch.Requests, rep.Prefetch.PeakRPS, rep.Prefetch.MeanRPS = int64(requests), peakRPS, requests/float64(T)
	rep.Series = Series{Connected: downsample(connected, 1000), Reconnects: downsample(reconnects, 1000), PrefetchRPS: downsample(prefetch, 1000)}
	if !o.NoJitter && !sc.Prefetch.NoJitter {
		herd := renewal(arrivals, refreshKernel(sc.Prefetch, true))
		hp := 0.0
		for _, p := range herd {
			hp = max(hp, p)
		}
		hr := peakOfRefreshes(herd, arrivals)
		rep.NoJitter = &HerdComparison{PeakRPS: hp, RefreshPeakRPS: hr, Ratio: hr / max(refreshPeak, 1e-9), PrefetchRPS: downsample(herd, 1000)}
	}
	// The headline: 100M devices (or the scenario's), this fleet.
	last := rep.Broadcasts[len(rep.Broadcasts)-1]
	rep.Headline = fmt.Sprintf("with %d proxies of %s connections, %s devices hold the new stage after %s (99%% after %s, half after %s); %d proxies needed at peak",
		proxies, chart.Human(float64(fleet.Capacity)), chart.Human(float64(last.Devices-last.Missed)), chart.Duration(last.T100MS/1000),
		chart.Duration(last.T99MS/1000), chart.Duration(last.T50MS/1000), needed)
	rep.WallSeconds = time.Since(start).Seconds()
	return rep
}

// peakOfRefreshes is the peak rate of refreshes: prefetches other than each
// device's first (the fill), which no TTL jitter can spread.
func peakOfRefreshes(p, arrivals []float64) float64 {
	m := 0.0
	for t := range p {
		m = max(m, p[t]-arrivals[t])
	}
	return m
}

// rampArrivals: devices arrive at a rate rising linearly from 0 at start to its
// peak at start+ramp (all at start when ramp is 0). Per-second counts.
func rampArrivals(n, start, ramp float64, T int) []float64 {
	a := make([]float64, T)
	if ramp <= 0 {
		a[min(int(start), T-1)] = n
		return a
	}
	cum := func(t float64) float64 { // devices arrived by t
		x := math.Min(math.Max(t-start, 0), ramp) / ramp
		return n * x * x
	}
	for t := 0; t < T; t++ {
		a[t] = cum(float64(t+1)) - cum(float64(t))
	}
	return a
}

// spread adds total uniformly over [at, at+width) seconds.
func spread(s []float64, at int, width, total float64) {
	if width < 1 {
		if at < len(s) {
			s[at] += total
		}
		return
	}
	for k := 0; k < int(math.Ceil(width)); k++ {
		if at+k >= len(s) {
			return
		}
		share := math.Min(1, width-float64(k)) / width
		s[at+k] += total * share
	}
}

// refreshKernel is the distribution, over whole seconds, of the time to a
// device's next prefetch: ttl x U(lo, hi) with ttl ~ T x U(1-j, 1+j). Without
// jitter every device refreshes after exactly the same mean interval,
// T x (lo+hi)/2: the same average load, with nothing to spread it.
func refreshKernel(p Prefetch, noJitter bool) []float64 {
	T := p.TTL.D().Seconds()
	if noJitter {
		m := (p.RefreshLo + p.RefreshHi) / 2
		if m == 0 {
			m = 1
		}
		at := max(1, int(math.Round(T*m)))
		k := make([]float64, at+1)
		k[at] = 1
		return k
	}
	j, lo, hi := p.Jitter, p.RefreshLo, p.RefreshHi
	maxS := int(math.Ceil(T*(1+j)*hi)) + 1
	k := make([]float64, maxS+1)
	const g = 600 // grid per factor: exact to well under 1%
	for a := 0; a < g; a++ {
		ttl := T * (1 - j + 2*j*(float64(a)+0.5)/g)
		for b := 0; b < g; b++ {
			r := ttl * (lo + (hi-lo)*(float64(b)+0.5)/g)
			k[min(int(r), maxS)] += 1.0 / (g * g)
		}
	}
	return k
}

// renewal solves P[t] = A[t] + sum_j K[j] P[t-j]: every prefetch schedules the
// next one after a draw from K (independent jitter per refresh).
func renewal(a, k []float64) []float64 {
	p := make([]float64, len(a))
	for t := range a {
		v := a[t]
		for j := 1; j < len(k) && j <= t; j++ {
			if k[j] != 0 {
				v += k[j] * p[t-j]
			}
		}
		p[t] = v
	}
	return p
}

// logNormalQuantiles returns m evenly spaced quantiles of the log-normal with
// this median and 99th percentile (seconds); the last is the 99.99th.
func logNormalQuantiles(p50, p99 float64, m int) []float64 {
	out := make([]float64, m)
	if p50 <= 0 {
		return out
	}
	sigma := 0.0
	if p99 > p50 {
		sigma = math.Log(p99/p50) / 2.3263
	}
	for i := range out {
		q := (float64(i) + 0.5) / float64(m)
		if i == m-1 {
			q = 0.9999
		}
		out[i] = p50 * math.Exp(sigma*math.Sqrt2*math.Erfinv(2*q-1))
	}
	return out
}

// deliveredShare is the share of devices holding the stage tau seconds after the
// change: each proxy writes its n devices at rate r after the pub/sub hop, and
// each frame then takes a last-mile delay.
func deliveredShare(tau, hop, n, r float64, delay []float64) float64 {
	if n <= 0 {
		return 1
	}
	s := 0.0
	for _, d := range delay {
		s += math.Min(1, math.Max(0, (tau-hop-d)*r/n))
	}
	return s / float64(len(delay))
}

func quantileTime(cdf func(float64) float64, q float64) float64 {
	lo, hi := 0.0, 1.0
	for cdf(hi) < q {
		hi *= 2
		if hi > 1e7 {
			return math.Inf(1)
		}
	}
	for i := 0; i < 60; i++ {
		mid := (lo + hi) / 2
		if cdf(mid) < q {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// downsample keeps at most m points (per-bucket maxima, so peaks survive).
func downsample(s []float64, m int) []Point {
	step := max(1, (len(s)+m-1)/m)
	out := make([]Point, 0, len(s)/step+1)
	for i := 0; i < len(s); i += step {
		v := 0.0
		for j := i; j < min(i+step, len(s)); j++ {
			v = max(v, s[j])
		}
		out = append(out, Point{T: float64(i), V: v})
	}
	return out
}

// proxyLossLive is the recovery model of one fault of a live run: the devices
// it moved, with the run's own backoff and fleet (the model's prediction beside
// what was measured).
func proxyLossLive(sc *Scenario, f Fault, st FaultStats, proxies int) (RecoveryModel, bool) {
	if st.Error != "" || st.Reconnects == 0 {
		return RecoveryModel{}, false
	}
	// The devices it moved: every one reconnected once.
	m, ok := proxyLoss(f, float64(st.Reconnects)*float64(proxies), proxies, sc.Fleet)
	return m, ok
}

// stormRamp is the longest connect ramp modelled as a storm (the admission
// model runs in 1 ms steps over at most 300 s).
const stormRamp = 2 * time.Minute

// connectStorm predicts, for a connect ramp of stormRamp or less, the seconds
// from the connect start until every device is connected: arrivals spread
// uniformly over the ramp meet the proxies' admission (burst, then rate); a
// refused device retries after the proxy's Retry-After, U(r, 2r), or its own
// backoff (500 ms doubling to 30 s, the reference device's) when longer. 0:
// not a storm (a longer ramp, whose arrivals admission does not bind).
func connectStorm(sc *Scenario, n float64, proxies int, fleet Fleet) float64 {
	ramp := sc.Connect.Ramp.D()
	if ramp > stormRamp || n <= 0 || proxies < 1 {
		return 0
	}
	m := RecoveryModel{Devices: n, Base: 0.5, Cap: 30, Admit: fleet.AdmitRate * float64(proxies), Burst: fleet.AdmitBurst * float64(proxies),
		Window: ramp.Seconds(), Arrivals: true, RetryAfter: fleet.RetryAfter.D().Seconds(), CatchUpSecs: 0.005}
	secs, _ := m.Recovery()
	return secs
}

// The proxy's defaults the partition model keeps (proxy.DefaultConfig):
// the load it publishes every reportInterval is also its reachability probe,
// each write failing after at most reportInterval; it counts itself cut after
// engineLostAfter of failures.
const (
	reportInterval  = 1.0 // seconds
	engineLostAfter = 3.0
)

// partition is the model of a proxy cut from Redis (partition or blackhole
// of its Redis links) for the fault's duration: its devices stay connected
// but receive nothing; a change made meanwhile reaches them after the heal:
// the connections the cut held are closed by the heal, the engine redials at
// once and its subscription's return re-reads the event's history (the
// proxy's probe, within a report interval, is the fallback), then the
// proxy fans the latest stage out to its share (pub/sub time + share /
// fanout rate).
type partition struct {
	devices                                       float64
	noticedMS, healedMS, recoveredMS, afterHealMS float64
}

// partitionedProxy models f when it cuts one proxy from Redis; ok is false
// for every other fault. Times are real milliseconds from the injection; a
// stage change during the cut is one the scenario makes within
// [at, at + duration x timeScale] of scenario time.
func partitionedProxy(sc *Scenario, f Fault, connected float64, proxies int, fleet Fleet, pubsubMS, timeScale float64) (partition, bool) {
	if (f.Action != "partition" && f.Action != "blackhole") || proxies < 1 || f.Duration <= 0 ||
		(f.Member != "" && f.Member != "proxy" && !strings.HasPrefix(f.Member, "proxy-")) ||
		(f.Link != "" && f.Link != "redis" && f.Link != "all") || (f.Action == "partition" && f.Direction != "" && f.Direction != "both") {
		return partition{}, false
	}
	d := f.Duration.D().Seconds()
	p := partition{devices: connected / float64(proxies), healedMS: d * 1000, noticedMS: -1}
	// The first probe after the cut starts U(0, interval) later and fails
	// after interval; the cut is counted engineLostAfter after that failure.
	if notice := reportInterval/2 + reportInterval + engineLostAfter; notice < d {
		p.noticedMS = notice * 1000
	}
	from, to := f.At.D().Seconds(), f.At.D().Seconds()+d*timeScale
	changed := false
	for _, st := range sc.Stages {
		if s := st.At.D().Seconds(); s >= from && s <= to {
			changed = true
		}
	}
	if !changed {
		return p, true // nobody was stale: recovered at once
	}
	p.afterHealMS = pubsubMS + p.devices/fleet.FanoutRate*1000
	p.recoveredMS = p.healedMS + p.afterHealMS
	return p, true
}

// proxyLoss is the recovery model of a proxy fault (kill or drain) with this
// fleet: the lost proxy's share of the connected devices reconnect to the
// survivors, within their admission rate. Other faults (Redis, broadcaster)
// move no device: ok is false.
func proxyLoss(f Fault, connected float64, proxies int, fleet Fleet) (RecoveryModel, bool) {
	if (f.Action != "proxy-kill" && f.Action != "proxy-drain") || proxies < 2 {
		return RecoveryModel{}, false
	}
	survivors := float64(proxies - 1)
	m := RecoveryModel{Devices: connected / float64(proxies), Base: f.BackoffBase.D().Seconds(), Cap: f.BackoffCap.D().Seconds(),
		Admit: fleet.AdmitRate * survivors, Burst: fleet.AdmitBurst * survivors, CatchUpSecs: 0.005, RetryAfter: fleet.RetryAfter.D().Seconds()}
	if f.Action == "proxy-drain" {
		m.Window, m.Jitter = f.Window.D().Seconds(), 2 // the proxy's drain window; reconnect after U(0, 2 s)
		if fleet.DirectedDrain {
			// Arrivals planned uniformly over the window, no faster than 80 %
			// of the survivors' admission: no jitter on top.
			m.Window, m.Jitter = math.Max(m.Window, m.Devices/(0.8*m.Admit)), 0
		}
	}
	return m, true
}

// refetchSample bounds the device ids whose slots are hashed to model a
// population's refetch curve (scaled up to the population).
const refetchSample = 200000

// refetchCurve is the refetch rate per second after a changed stage reaches n
// devices: the slots of sample device ids ("lg-<i>", as the live loadgen names
// them) through wire.RefetchDelay, the device client's own formula, scaled to n.
func refetchCurve(n float64, sample int, window time.Duration, slots int) (curve []Point, peak, flatness float64) {
	secs := int(math.Ceil(window.Seconds()))
	if sample <= 0 || secs <= 0 {
		return nil, 0, 0
	}
	bins := make([]float64, secs)
	for i := 0; i < sample; i++ {
		d := wire.RefetchDelay("lg-"+strconv.Itoa(i), window, slots)
		bins[min(int(d.Seconds()), secs-1)]++
	}
	mean := n / float64(secs)
	for s, c := range bins {
		rate := c * n / float64(sample)
		curve = append(curve, Point{T: float64(s), V: rate})
		peak = max(peak, rate)
		if mean > 0 {
			flatness = max(flatness, math.Abs(rate/mean-1))
		}
	}
	return curve, peak, flatness
}
