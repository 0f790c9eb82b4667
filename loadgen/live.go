package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/wire"
)

// LiveConfig configures a live run against a deployment.
type LiveConfig struct {
	ProxyURLs   []string // ws://host:port/v1/ws
	GraphQLURL  string   // http://host:port/graphql
	Broadcaster string   // http://host:port; stage changes go there (segment 0 only)
	Token       string   // producer token
	Devices     int64    // > 0 overrides the scenario
	// TimeScale compresses the timeline: 180 plays a 3-hour scenario in a minute.
	// Refresh hints from the server are compressed the same way.
	TimeScale float64
	// Segment i of n: this process runs devices with index = i (mod n) and, if
	// i is 0, makes the stage changes. Default 0/1.
	Segment, Segments int
	// SourceIPs spread connections over loopback addresses (127.0.0.x) to pass
	// the ephemeral-port limit per (source, destination).
	SourceIPs []string
	// Settle is how long to wait after the last stage change before the final
	// count. Default 5s.
	Settle time.Duration
	// StartAt aligns the shares of one run started in several processes
	// (default: now).
	StartAt time.Time
	Log     io.Writer
	// Progress is how the run shows progress on Log: "bar" (a redrawn bar, for
	// a terminal), "lines" (one line every 5 s, for files and CI logs) or
	// "none". Default "lines".
	Progress string
	// Fleet is the control interface of a fleet this run may hurt (make
	// cluster's control.json): the scenario's faults are injected through it.
	// A scenario with faults and no Fleet is refused.
	Fleet *FleetControl
	// Tokens, when set, gives each device its device token (a deployment that
	// requires them: --device-key mints one per device, --device-tokens reads
	// pre-minted ones). The token goes on the upgrade and with each prefetch.
	Tokens func(DeviceIdentity) (string, error)
}

// DeviceIdentity is who a simulated device is: what its device token claims.
// Member spreads the devices over members, Scenario.DevicesPerMember each.
type DeviceIdentity struct {
	Index                             int64
	Device, Member, Platform, Segment string
}

// liveDevice is one simulated device.
type liveDevice struct {
	c  *device.Client
	pf *device.Prefetcher
}

type versionLatency struct {
	mu   sync.Mutex
	hist *hdrhistogram.Histogram // ms from publish to receipt
	n    int64
}

// latencies holds a histogram per version seen, at most max of them (a
// version past the bound is not recorded).
type latencies struct {
	mu  sync.Mutex
	byV map[uint64]*versionLatency
	max int
}

func (l *latencies) of(v uint64) *versionLatency {
	l.mu.Lock()
	defer l.mu.Unlock()
	vl := l.byV[v]
	if vl == nil && len(l.byV) < l.max {
		vl = &versionLatency{hist: hdrhistogram.New(1, 3_600_000, 3)}
		l.byV[v] = vl
	}
	return vl
}

// LiveReport runs one share of sc (usually all of it) and returns its report.
func LiveReport(ctx context.Context, sc *Scenario, cfg LiveConfig) (*Report, error) {
	p, err := Live(ctx, sc, cfg)
	if err != nil {
		return nil, err
	}
	return Merge(sc, []*Partial{p})
}

// Live runs this process's share of sc against a deployment and returns what
// it measured. Every loop is bounded by the scenario's scaled duration plus Settle.
func Live(ctx context.Context, sc *Scenario, cfg LiveConfig) (*Partial, error) {
	r, err := newLiveRun(ctx, sc, cfg)
	if err != nil {
		return nil, err
	}
	if r.leader {
		// The stage map every device prefetches, and the live window.
		if err := putMap(ctx, r.bc, sc); err != nil {
			return nil, err
		}
		if err := r.bc.SetLive(ctx, sc.Event, true); err != nil {
			return nil, fmt.Errorf("loadgen live: event window: %w", err)
		}
	}
	runCtx, stopDevices := context.WithTimeout(ctx, r.total+r.cfg.Settle+30*time.Second)
	defer stopDevices()
	r.runCtx = runCtx
	r.startDevices()
	allUp := make(chan float64, 1)
	go func() { allUp <- r.watchAllConnected(runCtx) }()
	if err := r.play(ctx, r.timeline(ctx)); err != nil {
		return nil, err
	}
	// Count at the end, then stop every device.
	held, connected := r.heldNow()
	stopDevices()
	r.wg.Wait()
	p := r.partial(held, connected)
	p.AllConnectedS = <-allUp
	return p, nil
}

// watchAllConnected returns the seconds from the scenario's connect start
// until every device of this process was connected at once for the first
// time (-1 if that never happened before ctx ended), polling every 100 ms:
// how long a connect storm takes to be served.
func (r *liveRun) watchAllConnected(ctx context.Context) float64 {
	share := (r.n - int64(r.cfg.Segment) + int64(r.cfg.Segments) - 1) / int64(r.cfg.Segments)
	from := r.start.Add(r.scale(r.sc.Connect.Start))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return -1
		case <-tick.C:
		}
		r.mu.Lock()
		ds := r.devices
		up := int64(0)
		if int64(len(ds)) == share {
			for _, d := range ds {
				if d.c.Connected() {
					up++
				}
			}
		}
		r.mu.Unlock()
		if up == share && share > 0 {
			return time.Since(from).Seconds()
		}
	}
}

// liveRun is one Live run's state: the devices, the producer's timeline and
// what they measured (per-second bins over the run, histograms per version).
type liveRun struct {
	sc     *Scenario
	cfg    LiveConfig
	n      int64 // devices in the scenario (this process runs its share)
	total  time.Duration
	start  time.Time // wall time of the scenario's 0
	bc     *producer.Client
	leader bool // segment 0: makes the stage changes, injects the faults
	runCtx context.Context

	secs               int // per-second bins
	connectsPerSec     []atomic.Int64
	prefetchPerSec     []atomic.Int64
	reconnectBins      []atomic.Int64
	prefetchErrs, errs atomic.Int64
	connectsTotal      atomic.Int64
	posts              postLog
	lat                *latencies
	versionOf          []atomic.Uint64 // the version each scenario stage got
	storedAt           []atomic.Int64  // when the broadcaster acknowledged it (Unix ns)
	httpClients        map[string]*http.Client
	faults             []*faultRun
	mu                 sync.Mutex // guards devices
	devices            []*liveDevice
	wg                 sync.WaitGroup // the device goroutines
}

// newLiveRun checks cfg, fills its defaults and sets up the run's counters.
func newLiveRun(ctx context.Context, sc *Scenario, cfg LiveConfig) (*liveRun, error) {
	if len(cfg.ProxyURLs) == 0 || cfg.GraphQLURL == "" {
		return nil, errors.New("loadgen live: need proxy URLs and the GraphQL URL")
	}
	if cfg.TimeScale <= 0 {
		cfg.TimeScale = 1
	}
	if cfg.Segments <= 0 {
		cfg.Segments = 1
	}
	if cfg.Segment < 0 || cfg.Segment >= cfg.Segments {
		return nil, fmt.Errorf("loadgen live: segment %d/%d", cfg.Segment, cfg.Segments)
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if len(sc.Faults) > 0 && cfg.Fleet == nil && cfg.Segment == 0 {
		return nil, fmt.Errorf("loadgen live: scenario %q has %d faults but no fleet to inject them into: pass --fleet <log folder>/control.json of a fleet loadgen can control (make cluster), or remove the faults", sc.Name, len(sc.Faults))
	}
	r := &liveRun{sc: sc, cfg: cfg, n: sc.Devices, bc: &producer.Client{BaseURL: cfg.Broadcaster, Token: cfg.Token}, leader: cfg.Segment == 0,
		start: cfg.StartAt, runCtx: ctx}
	if cfg.Devices > 0 {
		r.n = cfg.Devices
	}
	r.total = r.scale(sc.Duration)
	if r.start.IsZero() {
		r.start = time.Now()
	}
	r.secs = int(math.Ceil(r.total.Seconds())) + int(cfg.Settle.Seconds()) + 2
	r.connectsPerSec = make([]atomic.Int64, r.secs)
	r.prefetchPerSec = make([]atomic.Int64, r.secs)
	r.reconnectBins = make([]atomic.Int64, r.secs)
	// Per version (versions are large numbers, not indexes), at most the
	// scenario's stages plus a few older ones a device catches up on.
	r.lat = &latencies{byV: map[uint64]*versionLatency{}, max: len(sc.Stages) + 64}
	r.versionOf = make([]atomic.Uint64, len(sc.Stages))
	r.storedAt = make([]atomic.Int64, len(sc.Stages))
	r.httpClients = map[string]*http.Client{}
	for _, ip := range append([]string{""}, cfg.SourceIPs...) {
		r.httpClients[ip] = device.NewHTTPClient(ip)
	}
	return r, nil
}

// scale maps a scenario time to the compressed timeline.
func (r *liveRun) scale(d Duration) time.Duration { return time.Duration(float64(d) / r.cfg.TimeScale) }

// reconnectScale: reconnect backoff follows the compressed timeline, except in
// runs with faults: there devices reconnect in real time, as real devices do
// against real proxies, drains and failovers, so recovery times are real ones.
func (r *liveRun) reconnectScale(d time.Duration) time.Duration {
	if len(r.sc.Faults) > 0 {
		return d
	}
	return time.Duration(float64(d) / r.cfg.TimeScale)
}

// bin is t's per-second bin.
func (r *liveRun) bin(t time.Time) int { return min(r.secs-1, max(0, int(t.Sub(r.start).Seconds()))) }

// client is device i's HTTP client (its source address).
func (r *liveRun) client(i int64) *http.Client {
	if len(r.cfg.SourceIPs) == 0 {
		return r.httpClients[""]
	}
	return r.httpClients[r.cfg.SourceIPs[int(i)%len(r.cfg.SourceIPs)]]
}

// latest is the newest version the producer's timeline made.
func (r *liveRun) latest() uint64 {
	var v uint64
	for i := range r.versionOf {
		v = max(v, r.versionOf[i].Load())
	}
	return v
}

// startDevices starts this process's share of the devices, each at its time.
func (r *liveRun) startDevices() {
	rampStart, ramp := r.scale(r.sc.Connect.Start), r.scale(r.sc.Connect.Ramp)
	for i := int64(r.cfg.Segment); i < r.n; i += int64(r.cfg.Segments) {
		// Open model: device i is due at start + ramp*sqrt(i/n) (a rate rising
		// linearly from 0), whatever happened to the others.
		due := DueAt(i, r.n, rampStart, ramp)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			select {
			case <-r.runCtx.Done():
				return
			case <-time.After(time.Until(r.start.Add(due))):
			}
			r.runDevice(i)
		}()
	}
}

// runDevice runs device idx (its prefetcher and its connection) until the run ends.
func (r *liveRun) runDevice(idx int64) {
	sc, cfg := r.sc, r.cfg
	platform, segment := mixPick(sc.Platforms, idx, "tv"), mixPick(sc.Segments, idx+7, "")
	var token string
	if cfg.Tokens != nil {
		var err error
		id := DeviceIdentity{Index: idx, Device: fmt.Sprintf("lg-%d", idx), Member: fmt.Sprintf("lg-m-%d", int64(float64(idx)/sc.DevicesPerMember)),
			Platform: platform, Segment: segment}
		if token, err = cfg.Tokens(id); err != nil {
			r.errs.Add(1)
			fmt.Fprintf(cfg.Log, "device token for %s: %v\n", id.Device, err)
			return
		}
	}
	hc := r.client(idx)
	urls := append(append([]string(nil), cfg.ProxyURLs[int(idx)%len(cfg.ProxyURLs):]...), cfg.ProxyURLs[:int(idx)%len(cfg.ProxyURLs)]...)
	pf, err := device.NewPrefetcher(device.PrefetchConfig{URL: cfg.GraphQLURL, Event: sc.Event, Segment: segment, Critical: true,
		Token: token, HTTPClient: hc, MissDelayMax: time.Duration(float64(5*time.Second) / cfg.TimeScale),
		DeviceID: fmt.Sprintf("lg-%d", idx),
		Sleep: func(ctx context.Context, d time.Duration) error {
			return device.Sleep(ctx, time.Duration(float64(d)/cfg.TimeScale))
		},
		OnFetch: func(err error, _ time.Duration) {
			if r.runCtx.Err() != nil {
				return // cut off by the end of the run: neither a request served nor an error
			}
			r.prefetchPerSec[r.bin(time.Now())].Add(1)
			if err != nil {
				r.prefetchErrs.Add(1)
				fmt.Fprintf(cfg.Log, "prefetch error: %v\n", err)
			}
		}})
	if err != nil {
		r.errs.Add(1)
		return
	}
	base, capB := 500*time.Millisecond, 30*time.Second
	if len(sc.Drops) > 0 {
		base, capB = sc.Drops[0].BackoffBase.D(), sc.Drops[0].BackoffCap.D()
	}
	var dev *liveDevice
	c, err := device.New(device.Config{URLs: urls, Device: fmt.Sprintf("lg-%d", idx), Platform: platform, Segment: segment,
		Token: token, Events: map[string]uint64{sc.Event: 0}, Ack: true, HTTPClient: hc,
		OnConnect: func() {
			r.connectsTotal.Add(1)
			r.reconnectBins[r.bin(time.Now())].Add(1)
		},
		BackoffBase: r.reconnectScale(base), BackoffCap: r.reconnectScale(capB),
		OnStage: func(f wire.ProxyFrame, at time.Time) {
			if l := r.lat.of(f.V); l != nil {
				l.mu.Lock()
				_ = l.hist.RecordValue(max(1, at.UnixMilli()-f.TS))
				l.n++
				l.mu.Unlock()
			}
			if dev != nil && dev.pf != nil {
				dev.pf.OnStageDigest(r.runCtx, f.Key, f.D)
			}
		}})
	if err != nil {
		r.errs.Add(1)
		return
	}
	dev = &liveDevice{c: c, pf: pf}
	r.mu.Lock()
	r.devices = append(r.devices, dev)
	r.mu.Unlock()
	r.connectsPerSec[r.bin(time.Now())].Add(1)
	go func() { _ = pf.Run(r.runCtx) }()
	_ = c.Run(r.runCtx)
}

// tick is one thing the timeline does at its time.
type tick struct {
	at   time.Duration
	what func()
}

// timeline is the producer's stage changes and the faults (segment 0), and
// the drop waves (every segment), in time order.
func (r *liveRun) timeline(ctx context.Context) []tick {
	sc, cfg := r.sc, r.cfg
	var ticks []tick
	if r.leader {
		for i, st := range sc.Stages {
			ticks = append(ticks, tick{r.scale(st.At), func() {
				t0 := time.Now()
				res, err := setStageRetrying(ctx, r.bc, sc.Event, st.Stage, fmt.Sprintf("loadgen-%d-%d", r.start.UnixNano(), i), st.Paced, 20*time.Second)
				r.posts.add(t0, time.Since(t0))
				if err != nil {
					r.errs.Add(1)
					fmt.Fprintf(cfg.Log, "stage %s: %v\n", st.Stage, err)
					return
				}
				r.storedAt[i].Store(time.Now().UnixNano())
				r.versionOf[i].Store(res.V)
				fmt.Fprintf(cfg.Log, "\n%6.1fs  stage %-16s v%d\n", time.Since(r.start).Seconds(), st.Stage, res.V)
			}})
		}
	}
	for _, d := range sc.Drops {
		ticks = append(ticks, tick{r.scale(d.At), func() {
			r.mu.Lock()
			ds := append([]*liveDevice(nil), r.devices...)
			r.mu.Unlock()
			every := max(1, int(math.Round(1/d.Fraction)))
			dropped := 0
			for k, dv := range ds {
				if k%every == 0 && dv.c.Drop() {
					dropped++
				}
			}
			fmt.Fprintf(cfg.Log, "\n%6.1fs  dropped %d connections\n", time.Since(r.start).Seconds(), dropped)
		}})
	}
	if r.leader {
		for _, f := range sc.Faults {
			fr := &faultRun{fault: f, stats: FaultStats{AtS: f.At.D().Seconds(), Action: f.Action, Target: f.Target}, done: make(chan struct{})}
			r.faults = append(r.faults, fr)
			ticks = append(ticks, tick{r.scale(f.At), func() {
				if f.Action == "heal" {
					r.healOpen(time.Now())
				}
				res, err := cfg.Fleet.InjectFault(ctx, f.request())
				fr.at = time.Now()
				if err != nil {
					r.errs.Add(1)
					fr.stats.Error = err.Error()
					fmt.Fprintf(cfg.Log, "\n%6.1fs  fault %s: %v\n", time.Since(r.start).Seconds(), f.Action, err)
					close(fr.done)
					return
				}
				fr.stats.Member = res.Member
				fmt.Fprintf(cfg.Log, "\n%6.1fs  fault %s: %s\n", time.Since(r.start).Seconds(), f.Action, res.Member)
				c0 := r.connectsTotal.Load()
				reconnects := func() int64 { return r.connectsTotal.Load() - c0 }
				if f.network() {
					if res.HealAtMS > 0 {
						fr.setHeal(time.UnixMilli(res.HealAtMS))
					}
					go fr.watchNetwork(r.runCtx, r, reconnects)
					return
				}
				go fr.watch(r.runCtx, &r.mu, &r.devices, sc.Event, r.latest, reconnects)
			}})
		}
	}
	sort.Slice(ticks, func(i, j int) bool { return ticks[i].at < ticks[j].at })
	return ticks
}

// play runs the ticks at their times, then waits Settle past the scenario's
// end, showing progress every second. It returns ctx's error if ctx ends first.
func (r *liveRun) play(ctx context.Context, ticks []tick) error {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	bar := newProgress(r.cfg.Log, r.cfg.Progress, r.start, r.total)
	wait := func(until time.Time) error {
		for time.Until(until) > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-ticker.C:
				bar.update(&r.mu, &r.devices, r.prefetchPerSec, r.bin)
			case <-time.After(time.Until(until)):
			}
		}
		return nil
	}
	for _, tk := range ticks {
		if err := wait(r.start.Add(tk.at)); err != nil {
			return err
		}
		tk.what()
	}
	if err := wait(r.start.Add(r.total + r.cfg.Settle)); err != nil {
		return err
	}
	bar.finish()
	return nil
}

// heldNow returns the version each device holds now and how many are connected.
func (r *liveRun) heldNow() ([]uint64, int) {
	r.mu.Lock()
	ds := append([]*liveDevice(nil), r.devices...)
	r.mu.Unlock()
	connected := 0
	held := make([]uint64, len(ds))
	for k, dv := range ds {
		if dv.c.Connected() {
			connected++
		}
		_, held[k] = dv.c.State(r.sc.Event)
	}
	return held, connected
}

// partial is what this process measured, with each fault's recovery.
func (r *liveRun) partial(held []uint64, connected int) *Partial {
	sc, cfg := r.sc, r.cfg
	part := &Partial{Segment: cfg.Segment, Segments: cfg.Segments, Devices: int64(len(held)),
		Connected: int64(connected), Held: map[uint64]int64{}, Latency: map[uint64]*hdrhistogram.Snapshot{},
		PrefetchErrors: r.prefetchErrs.Load(), Errors: r.errs.Load(), Proxies: len(cfg.ProxyURLs)}
	for _, h := range held {
		part.Held[h]++
	}
	for s := 0; s < r.secs; s++ {
		part.ConnectsPerSec = append(part.ConnectsPerSec, r.connectsPerSec[s].Load())
		part.PrefetchPerSec = append(part.PrefetchPerSec, r.prefetchPerSec[s].Load())
	}
	r.lat.mu.Lock()
	for v, l := range r.lat.byV {
		l.mu.Lock()
		if l.n > 0 {
			part.Latency[v] = l.hist.Export()
		}
		l.mu.Unlock()
	}
	r.lat.mu.Unlock()
	if r.leader {
		for i := range sc.Stages {
			part.Versions = append(part.Versions, r.versionOf[i].Load())
		}
	}
	part.WallSeconds = time.Since(r.start).Seconds()
	part.TimeScale = cfg.TimeScale
	last := r.latest()
	var missed int64
	for _, h := range held {
		if h < last {
			missed++
		}
	}
	for _, fr := range r.faults {
		if fr.at.IsZero() {
			fr.stats.Error = "not injected: the run ended first"
		} else {
			<-fr.done
		}
		f := fr.stats
		if f.Error == "" && f.RecoveredMS >= 0 {
			end := fr.at.Add(time.Duration(max(f.RecoveredMS, 0)*float64(time.Millisecond)) + time.Second)
			for b := r.bin(fr.at); b <= r.bin(end); b++ {
				f.ReconnectPeakPerS = max(f.ReconnectPeakPerS, float64(r.reconnectBins[b].Load()))
			}
			f.ProducerBlockedMS = r.posts.longest(fr.at, fr.at.Add(max(end.Sub(fr.at), 10*time.Second)))
		}
		f.Missed = missed
		if m, ok := proxyLossLive(sc, fr.fault, f, len(cfg.ProxyURLs)); ok {
			secs, _ := m.Recovery()
			f.PredictedMS = secs * 1000
		}
		part.Faults = append(part.Faults, f)
	}
	return part
}

// faultRun follows one injected fault until the fleet recovered.
type faultRun struct {
	fault  Fault
	stats  FaultStats
	at     time.Time
	healNS atomic.Int64 // a network fault's heal (Unix ns; 0: not yet)
	done   chan struct{}
}

// watch samples every 20 ms how many devices are disconnected or behind the
// stage that was current when the fault hit. The fault's effect takes time to show (a killed proxy's sockets
// close, a drain moves devices over its window), so recovery is the last moment
// a device was seen down or behind, once 2 s passed without one (or 60 s in
// all); a fault nobody noticed recovered in 0 ms.
func (fr *faultRun) watch(ctx context.Context, mu *sync.Mutex, devices *[]*liveDevice, event string, latest func() uint64, reconnects func() int64) {
	defer close(fr.done)
	const quiet, limit = 2 * time.Second, 60 * time.Second
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastBad time.Time
	defer func() { fr.stats.Reconnects = reconnects() }()
	// The stage every device held when the fault hit: a device is back when it
	// is connected and holds it again. Changes made after the fault are the
	// broadcasts' own delivery, measured with them.
	v := latest()
	for {
		mu.Lock()
		ds := append([]*liveDevice(nil), (*devices)...)
		mu.Unlock()
		var down int64
		behind := false
		for _, d := range ds {
			if !d.c.Connected() {
				down++
			}
			if _, held := d.c.State(event); held < v {
				behind = true
			}
		}
		now := time.Now()
		fr.stats.DevicesAffected = max(fr.stats.DevicesAffected, down)
		if down > 0 || behind {
			lastBad = now
		}
		switch {
		case lastBad.IsZero() && now.Sub(fr.at) >= quiet:
			fr.stats.RecoveredMS = 0
			return
		case !lastBad.IsZero() && now.Sub(lastBad) >= quiet:
			fr.stats.RecoveredMS = float64(lastBad.Sub(fr.at).Microseconds()) / 1000
			return
		case now.Sub(fr.at) >= limit:
			fr.stats.RecoveredMS = -1
			return
		}
		select {
		case <-ctx.Done():
			fr.stats.RecoveredMS = -1
			return
		case <-tick.C:
		}
	}
}

// postLog records the stage changes' start and duration.
type postLog struct {
	mu    sync.Mutex
	start []time.Time
	took  []time.Duration
}

func (p *postLog) add(start time.Time, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.start, p.took = append(p.start, start), append(p.took, took)
}

// longest is the longest change started in [from, to], in ms.
func (p *postLog) longest(from, to time.Time) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ms float64
	for i, s := range p.start {
		if !s.Before(from) && !s.After(to) {
			ms = max(ms, float64(p.took[i].Microseconds())/1000)
		}
	}
	return ms
}

// progress shows the run's timeline with the current rates: a bar on a
// terminal, a line every 5 s elsewhere, or nothing.
type progress struct {
	mode     string
	w        io.Writer
	bar      *progressbar.ProgressBar
	start    time.Time
	total    time.Duration
	lastLine time.Time
}

func newProgress(w io.Writer, mode string, start time.Time, total time.Duration) *progress {
	p := &progress{mode: mode, w: w, start: start, total: total}
	if mode == "bar" {
		p.bar = progressbar.NewOptions64(max(1, total.Milliseconds()/100),
			progressbar.OptionSetWriter(w), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(500*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetPredictTime(false))
	}
	return p
}

func (p *progress) finish() {
	switch p.mode {
	case "bar":
		_ = p.bar.Finish()
		fmt.Fprintln(p.w)
	case "none":
	default:
		fmt.Fprintf(p.w, "%s  done\n", time.Since(p.start).Round(time.Second))
	}
}

func (p *progress) update(mu *sync.Mutex, devices *[]*liveDevice, pps []atomic.Int64, bin func(time.Time) int) {
	mu.Lock()
	up := 0
	for _, d := range *devices {
		if d.c.Connected() {
			up++
		}
	}
	mu.Unlock()
	status := fmt.Sprintf("%6d connected %6d prefetch/s", up, pps[max(0, bin(time.Now())-1)].Load())
	switch p.mode {
	case "bar":
		p.bar.Describe(status)
		_ = p.bar.Set64(min(p.bar.GetMax64(), time.Since(p.start).Milliseconds()/100))
	case "none":
	default:
		if time.Since(p.lastLine) >= 5*time.Second {
			p.lastLine = time.Now()
			el := time.Since(p.start)
			fmt.Fprintf(p.w, "%s of %s (%3.0f%%) %s\n", el.Round(time.Second), p.total.Round(time.Second), 100*min(1, el.Seconds()/max(p.total.Seconds(), 1e-9)), status)
		}
	}
}

// putMap stores a stage map with one payload per scenario stage.
func putMap(ctx context.Context, bc *producer.Client, sc *Scenario) error {
	stages := map[string]any{}
	for _, st := range sc.Stages {
		if st.Changed {
			continue // devices do not hold it: its broadcast makes them fetch
		}
		stages[st.Stage] = map[string]any{"default": map[string]any{"rows": []string{st.Stage + "-rows"}}}
	}
	b, _ := json.Marshal(map[string]any{"stages": stages, "ttl_seconds": int(sc.Prefetch.TTL.D().Seconds())})
	if _, err := bc.PutStageMap(ctx, sc.Event, b); err != nil {
		return fmt.Errorf("loadgen live: stage map: %w", err)
	}
	return nil
}

// mixPick deterministically assigns device i a key of mix by its shares.
func mixPick(mix map[string]float64, i int64, def string) string {
	if len(mix) == 0 {
		return def
	}
	keys := make([]string, 0, len(mix))
	for k := range mix {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := fnv.New64a()
	fmt.Fprint(h, i)
	u := rand.New(rand.NewPCG(h.Sum64(), 1)).Float64()
	for _, k := range keys {
		if u < mix[k] {
			return k
		}
		u -= mix[k]
	}
	return keys[len(keys)-1]
}

// DueAt is when device i of n connects in the open arrival model: the rate
// rises linearly from 0 at start to its peak at start+ramp, so by start+x the
// share (x/ramp)^2 has arrived, and device i is due at start + ramp*sqrt(i/n).
func DueAt(i, n int64, start, ramp time.Duration) time.Duration {
	return start + time.Duration(float64(ramp)*math.Sqrt(float64(i)/float64(n)))
}

// ParseIPRange parses "127.0.0.2-127.0.0.9" (or a single address, or "") into
// the addresses of the range (last octet only).
func ParseIPRange(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	var a, b [4]int
	if _, err := fmt.Sscanf(lo, "%d.%d.%d.%d", &a[0], &a[1], &a[2], &a[3]); err != nil {
		return nil, fmt.Errorf("source IPs %q: %w", s, err)
	}
	if _, err := fmt.Sscanf(hi, "%d.%d.%d.%d", &b[0], &b[1], &b[2], &b[3]); err != nil {
		return nil, fmt.Errorf("source IPs %q: %w", s, err)
	}
	if a[0] != 127 || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || b[3] < a[3] || b[3] > 254 {
		return nil, fmt.Errorf("source IPs %q: want a range of 127.x.y.a-127.x.y.b (loopback only)", s)
	}
	var out []string
	for i := a[3]; i <= b[3]; i++ {
		out = append(out, fmt.Sprintf("%d.%d.%d.%d", a[0], a[1], a[2], i))
	}
	return out, nil
}
