package loadgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/stagecast/stagecast/internal/chart"
	"math"
	"os"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Partial is what one share (segment i of n) of a live run measured. Shares run
// in several processes, or on several machines, merge into one Report.
type Partial struct {
	Segment   int   `json:"segment"`
	Segments  int   `json:"segments"`
	Devices   int64 `json:"devices"`
	Connected int64 `json:"connected"`
	// Held: devices by the version they held at the end.
	Held map[uint64]int64 `json:"held"`
	// Latency: per version, ms from the change's ts to each device's receipt.
	Latency        map[uint64]*hdrhistogram.Snapshot `json:"latency"`
	ConnectsPerSec []int64                           `json:"connects_per_sec"`
	PrefetchPerSec []int64                           `json:"prefetch_per_sec"`
	PrefetchErrors int64                             `json:"prefetch_errors"`
	Errors         int64                             `json:"errors"`
	// Versions: the version each scenario stage got (segment 0 makes the changes).
	Versions    []uint64 `json:"versions,omitempty"`
	Proxies     int      `json:"proxies"`
	WallSeconds float64  `json:"wall_seconds"`
	// Faults (segment 0 injects them) and how the fleet recovered.
	Faults    []FaultStats `json:"faults,omitempty"`
	TimeScale float64      `json:"time_scale,omitempty"`
	// AllConnectedS: real seconds from the connect start until every device
	// of this share was connected at once (-1: never).
	AllConnectedS float64 `json:"all_connected_s"`
}

// WriteFile stores the partial as JSON.
func (p *Partial) WriteFile(path string) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ReadPartial reads a partial written by WriteFile.
func ReadPartial(path string) (*Partial, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p Partial
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

// Merge combines the shares of one live run into its report. Exactly one share
// must be segment 0 (it made the stage changes and knows their versions).
func Merge(sc *Scenario, parts []*Partial) (*Report, error) {
	var lead *Partial
	seen := map[int]bool{}
	for _, p := range parts {
		if p.Segments != parts[0].Segments {
			return nil, fmt.Errorf("merge: shares of different splits (%d and %d)", parts[0].Segments, p.Segments)
		}
		if seen[p.Segment] {
			return nil, fmt.Errorf("merge: two shares claim segment %d", p.Segment)
		}
		seen[p.Segment] = true
		if p.Segment == 0 {
			lead = p
		}
	}
	if lead == nil {
		return nil, errors.New("merge: no segment 0 share (it holds the stage versions)")
	}
	if len(parts) != lead.Segments {
		return nil, fmt.Errorf("merge: %d of %d shares: a missing share would undercount devices", len(parts), lead.Segments)
	}
	rep := &Report{Mode: "live", Scenario: sc.Name, Proxies: lead.Proxies,
		Marks: scenarioMarks(sc), ArrivalEndS: (sc.Connect.Start.D() + sc.Connect.Ramp.D()).Seconds()}
	held := map[uint64]int64{}
	lat := map[uint64]*hdrhistogram.Histogram{}
	var connects, prefetch []int64
	add := func(dst []int64, src []int64) []int64 {
		for len(dst) < len(src) {
			dst = append(dst, 0)
		}
		for i, v := range src {
			dst[i] += v
		}
		return dst
	}
	for _, p := range parts {
		rep.Devices += p.Devices
		rep.Connected += p.Connected
		rep.Errors += p.Errors
		rep.Prefetch.Errors += p.PrefetchErrors
		rep.WallSeconds = math.Max(rep.WallSeconds, p.WallSeconds)
		if rep.AllConnectedS >= 0 && p.AllConnectedS >= 0 {
			rep.AllConnectedS = math.Max(rep.AllConnectedS, p.AllConnectedS)
		} else {
			rep.AllConnectedS = -1
		}
		for v, n := range p.Held {
			held[v] += n
		}
		for v, s := range p.Latency {
			h := hdrhistogram.Import(s)
			if lat[v] == nil {
				lat[v] = h
			} else {
				lat[v].Merge(h)
			}
		}
		connects = add(connects, p.ConnectsPerSec)
		prefetch = add(prefetch, p.PrefetchPerSec)
	}
	prefetchSeries, connectSeries := make([]float64, len(prefetch)), make([]float64, len(connects))
	var cum float64
	for s, v := range prefetch {
		rep.Prefetch.Requests += v
		rep.Prefetch.PeakRPS = math.Max(rep.Prefetch.PeakRPS, float64(v))
		prefetchSeries[s] = float64(v)
	}
	for s, v := range connects {
		cum += float64(v)
		connectSeries[s] = cum
	}
	rep.Prefetch.MeanRPS = float64(rep.Prefetch.Requests) / math.Max(1, lead.WallSeconds)
	rep.Series = Series{Connected: downsample(connectSeries, 1000), PrefetchRPS: downsample(prefetchSeries, 1000)}
	for i, st := range sc.Stages {
		b := BroadcastStats{Stage: st.Stage, AtS: st.At.D().Seconds(), Devices: rep.Devices}
		if i < len(lead.Versions) {
			b.V = lead.Versions[i]
		}
		if b.V == 0 {
			rep.Broadcasts = append(rep.Broadcasts, b)
			continue
		}
		for v, n := range held {
			if v < b.V {
				b.Missed += n
			}
		}
		if h := lat[b.V]; h != nil && h.TotalCount() > 0 {
			b.T50MS, b.T99MS, b.T100MS = float64(h.ValueAtQuantile(50)), float64(h.ValueAtQuantile(99)), float64(h.Max())
			for _, bar := range h.CumulativeDistribution() {
				b.Curve = append(b.Curve, Point{T: float64(bar.ValueAt) / 1000, V: bar.Quantile / 100 * float64(h.TotalCount()) / float64(max(1, rep.Devices))})
			}
		}
		rep.Broadcasts = append(rep.Broadcasts, b)
	}
	if len(rep.Broadcasts) > 0 {
		last := rep.Broadcasts[len(rep.Broadcasts)-1]
		rep.Headline = fmt.Sprintf("%s devices, %s connected at the end; the last stage reached 50%% in %s, 99%% in %s, all who got it in %s; %d missed it",
			chart.Human(float64(rep.Devices)), chart.Human(float64(rep.Connected)), chart.Duration(last.T50MS/1000), chart.Duration(last.T99MS/1000),
			chart.Duration(last.T100MS/1000), last.Missed)
	}
	rep.Calibration = CalibrateFrom(sc, rep, func(BroadcastStats) bool { return true })
	rep.Faults, rep.TimeScale = lead.Faults, lead.TimeScale
	if h := faultHeadline(rep.Faults); h != "" {
		rep.Headline += "; " + h
	}
	return rep, nil
}

// CalibrateFrom derives the simulator's fleet and delay figures from the
// delivery curves of the broadcasts use selects, among those made while every
// device was connected: on a proxy with n devices the k-th write lands k/rate
// after the change reaches it, so rate = 0.49 n / (t99 - t50), and what t50
// leaves after 0.5 n / rate is the publish hop plus the last mile. Medians.
func CalibrateFrom(sc *Scenario, rep *Report, use func(BroadcastStats) bool) *Calibration {
	if rep.Proxies == 0 || rep.Devices == 0 {
		return nil
	}
	n := float64(rep.Devices) / float64(rep.Proxies)
	full := (sc.Connect.Start + sc.Connect.Ramp).D().Seconds()
	var rates, bases []float64
	for _, b := range rep.Broadcasts {
		if b.AtS < full || b.T99MS <= b.T50MS || !use(b) {
			continue
		}
		r := 0.49 * n / ((b.T99MS - b.T50MS) / 1000)
		rates = append(rates, r)
		bases = append(bases, math.Max(0, b.T50MS/1000-0.5*n/r))
	}
	if len(rates) == 0 {
		return nil
	}
	return &Calibration{FanoutRate: median(rates), PubSubMS: median(bases) * 1000, DeviceP50: 0.001, DeviceP99: 0.001}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
