package loadgen

import (
	"encoding/json"
	"fmt"
	"html/template"
	"os"
	"path/filepath"

	"github.com/stagecast/stagecast/internal/chart"
)

// Report is what a run writes to report.json (live and simulate share it).
type Report struct {
	Mode          string           `json:"mode"`
	Scenario      string           `json:"scenario"`
	Devices       int64            `json:"devices"`
	Connected     int64            `json:"connected"`
	Proxies       int              `json:"proxies"`
	ProxiesNeeded int              `json:"proxies_needed"`
	Broadcasts    []BroadcastStats `json:"broadcasts"`
	Prefetch      PrefetchStats    `json:"prefetch"`
	Errors        int64            `json:"errors"`
	WallSeconds   float64          `json:"wall_seconds"`
	Headline      string           `json:"headline"`
	NoJitter      *HerdComparison  `json:"no_jitter,omitempty"`
	// Calibration (live runs): the fleet and delay figures the simulator can take
	// (simulate --calibrate report.json).
	Calibration *Calibration `json:"calibration,omitempty"`
	// Faults injected (live) or modelled (simulate), and the recovery.
	Faults []FaultStats `json:"faults,omitempty"`
	// AllConnectedS: seconds from the connect start until every device was
	// connected (live: measured, real seconds, the slowest share; -1 never;
	// simulate: the admission model's prediction for a connect storm, a ramp
	// of 2 minutes or less; 0 when not modelled).
	AllConnectedS float64 `json:"all_connected_s"`
	// TimeScale maps scenario time to the series' time axis (live runs play the
	// scenario compressed; 1 for simulate).
	TimeScale float64 `json:"time_scale,omitempty"`
	Series    Series  `json:"series"`
	// Marks are the scenario's stage changes and drops (the timelines' markers);
	// ArrivalEndS is when devices stopped arriving (scenario seconds): a stage
	// before it is arrival-driven.
	Marks       []Mark  `json:"marks,omitempty"`
	ArrivalEndS float64 `json:"arrival_end_s,omitempty"`
}

// Mark is a labelled moment of the scenario on the timelines.
type Mark struct {
	AtS   float64 `json:"at_s"`
	Label string  `json:"label"`
	Kind  string  `json:"kind"` // stage, drop
}

// scenarioMarks are a scenario's stage changes and drops.
func scenarioMarks(sc *Scenario) []Mark {
	var ms []Mark
	for _, st := range sc.Stages {
		ms = append(ms, Mark{AtS: st.At.D().Seconds(), Label: st.Stage, Kind: "stage"})
	}
	for _, d := range sc.Drops {
		ms = append(ms, Mark{AtS: d.At.D().Seconds(), Label: fmt.Sprintf("drop %.0f%%", 100*d.Fraction), Kind: "drop"})
	}
	return ms
}

// ReadCalibration reads the calibration of a live run's report.json.
func ReadCalibration(path string) (*Calibration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Calibration == nil || r.Calibration.FanoutRate <= 0 {
		return nil, fmt.Errorf("%s: no calibration (it comes from a live run with broadcasts after every device connected)", path)
	}
	return r.Calibration, nil
}

// BroadcastStats is one stage change: when each share of devices held it.
type BroadcastStats struct {
	Stage   string  `json:"stage"`
	V       uint64  `json:"v"`
	AtS     float64 `json:"at_s"`
	Devices int64   `json:"devices"`
	T50MS   float64 `json:"t50_ms"`
	T99MS   float64 `json:"t99_ms"`
	T100MS  float64 `json:"t100_ms"`
	Missed  int64   `json:"missed"`
	Curve   []Point `json:"curve"` // share of devices on the version, by seconds after the change
	// For a changed stage: the refetch rate over the window (requests/s, per
	// second after the change), its peak and its flatness (max |rate/mean - 1|).
	Refetch         []Point `json:"refetch,omitempty"`
	RefetchPeakRPS  float64 `json:"refetch_peak_rps,omitempty"`
	RefetchFlatness float64 `json:"refetch_flatness,omitempty"`
}

// PrefetchStats is the prefetch load.
type PrefetchStats struct {
	Requests int64   `json:"requests"`
	PeakRPS  float64 `json:"peak_rps"`
	MeanRPS  float64 `json:"mean_rps"`
	Errors   int64   `json:"errors"`
	// RefreshPeakRPS is the peak of refreshes alone (every prefetch but each
	// device's first): the traffic TTL jitter spreads.
	RefreshPeakRPS float64 `json:"refresh_peak_rps,omitempty"`
}

// HerdComparison is the same run without jitter.
type HerdComparison struct {
	PeakRPS        float64 `json:"peak_rps"`
	RefreshPeakRPS float64 `json:"refresh_peak_rps"`
	// Ratio: peak refresh rate without jitter / with jitter.
	Ratio       float64 `json:"ratio"`
	PrefetchRPS []Point `json:"prefetch_rps"`
}

// Series are per-second curves for the plots.
type Series struct {
	Connected   []Point `json:"connected"`
	Reconnects  []Point `json:"reconnects"`
	PrefetchRPS []Point `json:"prefetch_rps"`
}

// Point is one point of a curve.
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Write writes dir/report.json and dir/report.html.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		return err
	}
	defer f.Close()
	return reportTmpl.Execute(f, r)
}

// markers places the scenario's stage changes, drops and faults on the
// timelines (scenario time).
func (r *Report) markers() []chart.Marker {
	var ms []chart.Marker
	for _, m := range r.Marks {
		ms = append(ms, chart.Marker{X: m.AtS, Label: m.Label, Kind: m.Kind})
	}
	for _, f := range r.Faults {
		label := f.Action
		if f.Member != "" {
			label += " " + f.Member
		}
		ms = append(ms, chart.Marker{X: f.AtS, Label: label, Kind: "fault"})
	}
	return ms
}

// scenarioTime maps a series (wall seconds for live runs) to scenario seconds.
func (r *Report) scenarioTime(ps []Point) []chart.Point {
	scale := r.TimeScale
	if scale <= 0 {
		scale = 1
	}
	out := make([]chart.Point, len(ps))
	for i, p := range ps {
		out[i] = chart.Point{X: p.T * scale, Y: p.V}
	}
	return out
}

func points(ps []Point, xScale, yScale float64) []chart.Point {
	out := make([]chart.Point, len(ps))
	for i, p := range ps {
		out[i] = chart.Point{X: p.T * xScale, Y: p.V * yScale}
	}
	return out
}

// arrivalDriven reports whether a broadcast came while devices were still
// arriving: its curve is the arrival curve, not a fanout.
func (r *Report) arrivalDriven(b BroadcastStats) bool { return b.AtS < r.ArrivalEndS }

// fanouts are the broadcasts that measure a fanout.
func (r *Report) fanouts() []BroadcastStats {
	var out []BroadcastStats
	for _, b := range r.Broadcasts {
		if !r.arrivalDriven(b) {
			out = append(out, b)
		}
	}
	return out
}

// keyStage is the knockout-like fanout: the one that reached the most
// devices; among equals, one that came with a drop wave (the moment a game
// day is about), else the latest.
func (r *Report) keyStage() *BroadcastStats {
	withDrop := func(b BroadcastStats) bool {
		for _, m := range r.Marks {
			if m.Kind == "drop" && m.AtS == b.AtS {
				return true
			}
		}
		return false
	}
	var best *BroadcastStats
	for _, b := range r.fanouts() {
		if best == nil || b.Devices > best.Devices || (b.Devices == best.Devices && (withDrop(b) || !withDrop(*best))) {
			b := b
			best = &b
		}
	}
	return best
}

// Summary answers the questions an SRE asks after a game day.
type Summary struct {
	AllDelivered bool
	Missed       int64
	WorstP99     string
	WorstStage   string
	PrefetchPeak string
	PrefetchMean string
	JitterSaved  string
}

func (r *Report) summary() Summary {
	var s Summary
	var worst float64
	for _, b := range r.Broadcasts {
		s.Missed += b.Missed
	}
	for _, b := range r.fanouts() {
		if b.T99MS >= worst {
			worst, s.WorstStage = b.T99MS, b.Stage
		}
	}
	s.AllDelivered = s.Missed == 0
	s.WorstP99 = chart.Duration(worst / 1000)
	s.PrefetchPeak, s.PrefetchMean = chart.Rate(r.Prefetch.PeakRPS), chart.Rate(r.Prefetch.MeanRPS)
	if r.NoJitter != nil {
		s.JitterSaved = fmt.Sprintf("without jitter refreshes would peak at %s, x%.1f the %s with it", chart.Rate(r.NoJitter.RefreshPeakRPS), r.NoJitter.Ratio, chart.Rate(r.Prefetch.RefreshPeakRPS))
	}
	return s
}

func must(h template.HTML, err error) template.HTML {
	if err != nil {
		return template.HTML("<p>chart error: " + template.HTMLEscapeString(err.Error()) + "</p>")
	}
	return h
}

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"human":   func(v any) string { return chart.Human(toF(v)) },
	"rate":    func(v float64) string { return chart.Rate(v) },
	"ms":      func(v float64) string { return chart.Duration(v / 1000) },
	"clock":   chart.Clock,
	"summary": func(r *Report) Summary { return r.summary() },
	"arrivals": func(r *Report) []BroadcastStats {
		var out []BroadcastStats
		for _, b := range r.Broadcasts {
			if r.arrivalDriven(b) {
				out = append(out, b)
			}
		}
		return out
	},
	"connectPlot": func(r *Report) template.HTML {
		return must(chart.SVG(chart.Plot{Title: "Connected devices", XKind: chart.ClockAxis, XLabel: "scenario time (h:mm:ss)", YLabel: "devices",
			Series: []chart.Series{{Name: "connected", Points: r.scenarioTime(r.Series.Connected)}}, Marks: r.markers()}))
	},
	"reconnectPlot": func(r *Report) template.HTML {
		if len(r.Series.Reconnects) == 0 {
			return ""
		}
		return must(chart.SVG(chart.Plot{Title: "Reconnects per second (drops, drains, faults)", XKind: chart.ClockAxis, XLabel: "scenario time (h:mm:ss)", YLabel: "reconnects/s",
			Series: []chart.Series{{Name: "reconnects/s", Points: r.scenarioTime(r.Series.Reconnects)}}, Marks: r.markers()}))
	},
	"prefetchPlot": func(r *Report) template.HTML {
		ss := []chart.Series{{Name: "with jitter", Points: r.scenarioTime(r.Series.PrefetchRPS)}}
		if r.NoJitter != nil {
			ss = append(ss, chart.Series{Name: "without jitter", Points: r.scenarioTime(r.NoJitter.PrefetchRPS), Dashed: true})
		}
		return must(chart.SVG(chart.Plot{Title: "Prefetch requests per second", XKind: chart.ClockAxis, XLabel: "scenario time (h:mm:ss)", YLabel: "requests/s",
			Series: ss, Marks: r.markers()}))
	},
	"convergence": func(r *Report) []template.HTML {
		var out []template.HTML
		for _, b := range r.fanouts() {
			out = append(out, must(chart.SVG(chart.Plot{Title: fmt.Sprintf("%s at %s", b.Stage, chart.Clock(b.AtS)), XKind: chart.DurationAxis,
				XLabel: "after the change", YLabel: "% of devices", YMax: 100, Width: 300, Height: 190,
				Series: []chart.Series{{Name: "received", Points: points(b.Curve, 1, 100)}}})))
		}
		return out
	},
	"latencyPlot": func(r *Report) template.HTML {
		b := r.keyStage()
		if b == nil || len(b.Curve) < 2 {
			return ""
		}
		var bars []chart.Point
		for i := 1; i < len(b.Curve); i++ {
			bars = append(bars, chart.Point{X: b.Curve[i].T, Y: 100 * (b.Curve[i].V - b.Curve[i-1].V)})
		}
		return must(chart.SVG(chart.Plot{Title: fmt.Sprintf("Time to device at %s: share of devices per interval", b.Stage), XKind: chart.DurationAxis,
			XLabel: "after the change", YLabel: "% of devices", Bars: true, Series: []chart.Series{{Name: "devices", Points: bars}}}))
	},
}).Parse(reportHTML))

func toF(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case int:
		return float64(x)
	case float64:
		return x
	}
	return 0
}

const reportHTML = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>stagecast {{.Mode}}: {{.Scenario}}</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:1000px;color:#111}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}
.summary{border:2px solid #333;padding:8px 16px;border-radius:6px}.summary li{margin:4px 0}.ok{color:#0a6b2d;font-weight:700}.bad{color:#b3261e;font-weight:700}
svg.chart{width:100%;height:auto}.multiples{display:grid;grid-template-columns:repeat(3,1fr);gap:8px}.note{color:#444}</style></head><body>
<h1>stagecast {{.Mode}}: {{.Scenario}}</h1>
{{$s := summary .}}<div class="summary" id="summary"><h2>Summary</h2><ul>
<li>Every device got every stage: {{if $s.AllDelivered}}<span class="ok">yes</span>{{else}}<span class="bad">no: {{human $s.Missed}} missed</span>{{end}} ({{human .Devices}} devices, {{human .Connected}} connected at the end, {{len .Broadcasts}} stage changes).</li>
<li>How fast: the slowest p99 of a broadcast was <b>{{$s.WorstP99}}</b>{{if $s.WorstStage}} ({{$s.WorstStage}}){{end}}.</li>
<li>Prefetch: peak <b>{{$s.PrefetchPeak}}</b>, mean {{$s.PrefetchMean}}, {{human .Prefetch.Errors}} errors; fleet {{.Proxies}} proxies{{if .ProxiesNeeded}} ({{.ProxiesNeeded}} needed at the peak of connections){{end}}.</li>
{{if $s.JitterSaved}}<li>What jitter saved: {{$s.JitterSaved}}.</li>{{end}}
<li>{{.Headline}}</li></ul></div>
<h2>Timeline</h2>
<p class="note">Dashed vertical lines: stage changes (grey), drops (orange), faults (red), at scenario time.</p>
{{connectPlot .}}
{{reconnectPlot .}}
{{prefetchPlot .}}
<h2>Broadcasts</h2>
<table><tr><th>v</th><th>stage</th><th>at</th><th>devices</th><th>50%</th><th>99%</th><th>100%</th><th>missed</th></tr>
{{range .Broadcasts}}<tr><td>{{.V}}</td><td>{{.Stage}}</td><td>{{clock .AtS}}</td><td>{{human .Devices}}</td><td>{{ms .T50MS}}</td><td>{{ms .T99MS}}</td><td>{{ms .T100MS}}</td><td>{{.Missed}}</td></tr>
{{end}}</table>
<h3>Convergence per broadcast</h3>
{{with arrivals .}}<p class="note" id="arrival-note">Left out: {{range .}}{{.Stage}} (at {{clock .AtS}}) {{end}}came while devices were still arriving, so its curve is the arrival curve, not a fanout.</p>{{end}}
<div class="multiples">{{range convergence .}}{{.}}{{end}}</div>
{{latencyPlot .}}
{{if .Faults}}<h2>Faults</h2>
<table><tr><th>at</th><th>fault</th><th>member</th><th>devices affected</th><th>reconnects</th><th>peak</th><th>recovered</th><th>producer blocked</th><th>missed</th><th>noticed (not ready)</th><th>healed</th><th>after the heal</th></tr>
{{range .Faults}}<tr><td>{{clock .AtS}}</td><td>{{.Action}}</td><td>{{.Member}}{{.Error}}</td><td>{{human .DevicesAffected}}</td><td>{{human .Reconnects}}</td><td>{{rate .ReconnectPeakPerS}}</td><td>{{if ge .RecoveredMS 0.0}}{{ms .RecoveredMS}}{{else}}<b>not recovered</b>{{end}}</td><td>{{ms .ProducerBlockedMS}}</td><td>{{.Missed}}</td><td>{{if gt .HealedMS 0.0}}{{if ge .NoticedMS 0.0}}{{ms .NoticedMS}}{{else}}never{{end}}{{end}}</td><td>{{if gt .HealedMS 0.0}}{{ms .HealedMS}}{{end}}</td><td>{{if gt .HealedMS 0.0}}{{ms .RecoveredAfterHealMS}}{{end}}</td></tr>
{{end}}</table>{{end}}
</body></html>`
