package broadcaster

import (
	"fmt"
	"html/template"
	"io"
	"time"

	"github.com/stagecast/stagecast/internal/chart"
)

// WriteReportHTML writes a delivery report as one self-contained HTML page
// (`stagecast stage report --html`): a summary, the time-to-device curve from
// the report's percentiles, and a table and chart per proxy.
func WriteReportHTML(w io.Writer, r Report) error {
	curve := func(ms map[string]*int64) []chart.Point {
		pts := []chart.Point{{X: 0, Y: 0}}
		for _, q := range []struct {
			k string
			p float64
		}{{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p100", 100}} {
			if v := ms[q.k]; v != nil {
				pts = append(pts, chart.Point{X: float64(*v) / 1000, Y: q.p})
			}
		}
		return pts
	}
	series := []chart.Series{{Name: "all proxies", Points: curve(r.SentMS)}}
	for _, p := range r.PerProxy {
		series = append(series, chart.Series{Name: p.Proxy, Points: curve(p.SentMS), Dashed: true})
	}
	cdf, err := chart.SVG(chart.Plot{Title: fmt.Sprintf("Share of connected devices sent v%d (%s), by time after the change", r.V, r.Stage),
		XKind: chart.DurationAxis, XLabel: "after the change", YLabel: "% of devices", YMax: 100, Series: series})
	if err != nil {
		return err
	}
	return reportPage.Execute(w, map[string]any{"R": r, "CDF": cdf, "At": time.UnixMilli(r.TS).UTC().Format(time.RFC3339),
		"Devices": chart.Human(float64(r.Devices)), "Sent": chart.Human(float64(r.Sent)), "Acked": chart.Human(float64(r.Acked))})
}

var reportPage = template.Must(template.New("report").Funcs(template.FuncMap{
	"ms": func(v *int64) string {
		if v == nil {
			return "not reached"
		}
		return chart.Duration(float64(*v) / 1000)
	},
	"human": func(v any) string {
		switch x := v.(type) {
		case int64:
			return chart.Human(float64(x))
		case uint64:
			return chart.Human(float64(x))
		}
		return fmt.Sprint(v)
	},
}).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>delivery of {{.R.Event}} v{{.R.V}}</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:900px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}svg.chart{width:100%;height:auto}.summary{border:2px solid #333;padding:8px 16px;border-radius:6px}</style></head><body>
<h1>Delivery of {{.R.Event}}: {{.R.Stage}} (v{{.R.V}})</h1>
<div class="summary" id="summary"><ul>
<li>Changed at {{.At}}; {{.Devices}} devices connected to the event on {{.R.Proxies}} proxies ({{.R.StaleProxies}} stale).</li>
<li>Sent to {{.Sent}} ({{printf "%.1f" .R.SentPct}}%), acked by {{.Acked}} ({{printf "%.1f" .R.AckedPct}}%).</li>
<li>Time to 50% {{ms (index .R.SentMS "p50")}}, 90% {{ms (index .R.SentMS "p90")}}, 99% {{ms (index .R.SentMS "p99")}}, 100% {{ms (index .R.SentMS "p100")}}.</li>
</ul></div>
{{.CDF}}
<h2>Per proxy</h2>
<table><tr><th>proxy</th><th>devices</th><th>sent</th><th>acked</th><th>50%</th><th>99%</th><th>100%</th></tr>
{{range .R.PerProxy}}<tr><td>{{.Proxy}}{{if .Stale}} (stale){{end}}</td><td>{{human .Devices}}</td><td>{{human .Sent}}</td><td>{{human .Acked}}</td><td>{{ms (index .SentMS "p50")}}</td><td>{{ms (index .SentMS "p99")}}</td><td>{{ms (index .SentMS "p100")}}</td></tr>
{{end}}</table>
</body></html>`))
