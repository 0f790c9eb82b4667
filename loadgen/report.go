package loadgen

import (
	"encoding/json"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"strings"
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
	// TimeScale maps scenario time to the series' time axis (live runs play the
	// scenario compressed; 1 for simulate).
	TimeScale float64 `json:"time_scale,omitempty"`
	Series    Series  `json:"series"`
}

// marker is a labelled vertical line on a timeline plot.
type marker struct {
	x     float64
	label string
}

// faultMarkers places the faults on the timeline plots.
func (r *Report) faultMarkers() []marker {
	scale := r.TimeScale
	if scale <= 0 {
		scale = 1
	}
	var ms []marker
	for _, f := range r.Faults {
		label := f.Action
		if f.Member != "" {
			label += " " + f.Member
		}
		ms = append(ms, marker{x: f.AtS / scale, label: label})
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

// svgPlot draws curves as an inline SVG (no external assets).
func svgPlot(title, xLabel, yLabel string, curves map[string][]Point, markers ...marker) template.HTML {
	const w, h, pad = 640.0, 240.0, 48.0
	var maxX, maxY float64
	for _, c := range curves {
		for _, p := range c {
			maxX, maxY = max(maxX, p.T), max(maxY, p.V)
		}
	}
	for _, m := range markers {
		maxX = max(maxX, m.x)
	}
	if maxX == 0 {
		maxX = 1
	}
	if maxY == 0 {
		maxY = 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" role="img" aria-label="%s">`, w, h, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="13" font-weight="bold">%s</text>`, pad, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#333"/><line x1="%.0f" y1="24" x2="%.0f" y2="%.0f" stroke="#333"/>`, pad, h-pad, w-10, h-pad, pad, pad, h-pad)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="11">%s (max %.4g)</text><text x="4" y="36" font-size="11">%s (max %.4g)</text>`, w/2-60, h-12, template.HTMLEscapeString(xLabel), maxX, template.HTMLEscapeString(yLabel), maxY)
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}
	i := 0
	for _, name := range sortedKeys(curves) {
		var pts strings.Builder
		for _, p := range curves[name] {
			fmt.Fprintf(&pts, "%.1f,%.1f ", pad+(p.T/maxX)*(w-pad-10), (h-pad)-(p.V/maxY)*(h-pad-24))
		}
		c := colors[i%len(colors)]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, c, pts.String())
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" font-size="11" fill="%s">%s</text>`, w-170, 40+14*i, c, template.HTMLEscapeString(name))
		i++
	}
	for k, m := range markers {
		x := pad + (m.x/maxX)*(w-pad-10)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="24" x2="%.1f" y2="%.0f" stroke="#c00" stroke-dasharray="4 3"/><text x="%.1f" y="%d" font-size="10" fill="#c00">%s</text>`,
			x, x, h-pad, x+3, 30+12*(k%4), template.HTMLEscapeString(m.label))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func sortedKeys(m map[string][]Point) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[j] < keys[i] {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
	}
	return keys
}

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"connectPlot": func(r *Report) template.HTML {
		return svgPlot("Connected devices", "seconds", "devices", map[string][]Point{"connected": r.Series.Connected}, r.faultMarkers()...)
	},
	"reconnectPlot": func(r *Report) template.HTML {
		if len(r.Series.Reconnects) == 0 {
			return ""
		}
		return svgPlot("Reconnects per second (drops, drains, faults)", "seconds", "reconnects/s", map[string][]Point{"reconnects/s": r.Series.Reconnects}, r.faultMarkers()...)
	},
	"prefetchPlot": func(r *Report) template.HTML {
		c := map[string][]Point{"with jitter": r.Series.PrefetchRPS}
		if r.NoJitter != nil {
			c["without jitter"] = r.NoJitter.PrefetchRPS
		}
		return svgPlot("Prefetch requests per second", "seconds", "requests/s", c, r.faultMarkers()...)
	},
	"deliveryPlot": func(r *Report) template.HTML {
		c := map[string][]Point{}
		for _, b := range r.Broadcasts {
			c[fmt.Sprintf("v%d %s", b.V, b.Stage)] = b.Curve
		}
		return svgPlot("Share of devices on each new stage", "seconds after the change", "share", c)
	},
}).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>stagecast {{.Mode}}: {{.Scenario}}</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:900px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style></head><body>
<h1>stagecast {{.Mode}}: {{.Scenario}}</h1>
<p><b>{{.Headline}}</b></p>
<p>{{.Devices}} devices, {{.Connected}} connected at the end, {{.Proxies}} proxies ({{.ProxiesNeeded}} needed at peak); {{printf "%.2f" .WallSeconds}} s of wall time; {{.Errors}} errors.</p>
{{connectPlot .}}
{{reconnectPlot .}}
<h2>Prefetch</h2>
<p>{{.Prefetch.Requests}} requests, peak {{printf "%.0f" .Prefetch.PeakRPS}}/s, mean {{printf "%.0f" .Prefetch.MeanRPS}}/s, {{.Prefetch.Errors}} errors.{{if .NoJitter}} Refreshes (every prefetch after a device's first) peak at {{printf "%.0f" .Prefetch.RefreshPeakRPS}}/s; without jitter they would peak at {{printf "%.0f" .NoJitter.RefreshPeakRPS}}/s: <b>{{printf "%.1f" .NoJitter.Ratio}}x</b> the herd.{{end}}</p>
{{prefetchPlot .}}
<h2>Broadcasts</h2>
<table><tr><th>v</th><th>stage</th><th>at (s)</th><th>devices</th><th>50%</th><th>99%</th><th>100%</th><th>missed</th></tr>
{{range .Broadcasts}}<tr><td>{{.V}}</td><td>{{.Stage}}</td><td>{{printf "%.0f" .AtS}}</td><td>{{.Devices}}</td><td>{{printf "%.0f" .T50MS}} ms</td><td>{{printf "%.0f" .T99MS}} ms</td><td>{{printf "%.0f" .T100MS}} ms</td><td>{{.Missed}}</td></tr>
{{end}}</table>
{{deliveryPlot .}}
{{if .Faults}}<h2>Faults</h2>
<table><tr><th>at (s)</th><th>fault</th><th>member</th><th>devices affected</th><th>reconnects</th><th>peak/s</th><th>recovered</th><th>producer blocked</th><th>missed</th></tr>
{{range .Faults}}<tr><td>{{printf "%.0f" .AtS}}</td><td>{{.Action}}</td><td>{{.Member}}{{.Error}}</td><td>{{.DevicesAffected}}</td><td>{{.Reconnects}}</td><td>{{printf "%.0f" .ReconnectPeakPerS}}</td><td>{{if ge .RecoveredMS 0.0}}{{printf "%.0f" .RecoveredMS}} ms{{else}}<b>not recovered</b>{{end}}</td><td>{{printf "%.0f" .ProducerBlockedMS}} ms</td><td>{{.Missed}}</td></tr>
{{end}}</table>{{end}}
</body></html>`))
