//go:build !nocharts

package chart

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

var palette = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {255, 127, 14, 255}, {148, 103, 189, 255}, {140, 86, 75, 255}}

var markColors = map[string]color.RGBA{"stage": {60, 60, 60, 255}, "drop": {230, 120, 0, 255}, "fault": {200, 0, 0, 255}}

// SVG renders p as inline SVG (no XML declaration), with a role and label.
func SVG(p Plot) (template.HTML, error) {
	pl := plot.New()
	pl.Title.Text = p.Title
	pl.X.Label.Text = p.XLabel
	pl.Y.Label.Text = p.YLabel
	pl.Y.Min = 0
	pl.Add(plotter.NewGrid())
	switch p.XKind {
	case ClockAxis:
		pl.X.Tick.Marker = clockTicks{}
	default:
		pl.X.Tick.Marker = durationTicks{}
	}
	pl.Y.Tick.Marker = humanTicks{}
	yMax := p.YMax
	for i, s := range p.Series {
		if len(s.Points) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.Points))
		for k, pt := range s.Points {
			xys[k] = plotter.XY{X: pt.X, Y: pt.Y}
			yMax = math.Max(yMax, pt.Y)
		}
		c := palette[i%len(palette)]
		if p.Bars && i == 0 {
			h, err := plotter.NewHistogram(xys, len(xys)) // Y weighs each X
			if err != nil {
				return "", err
			}
			h.FillColor = c
			h.LineStyle.Width = vg.Points(0.5)
			pl.Add(h)
			pl.Legend.Add(s.Name, h)
			continue
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return "", err
		}
		l.Color = c
		l.Width = vg.Points(1.5)
		if s.Dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		pl.Add(l)
		pl.Legend.Add(s.Name, l)
	}
	if yMax <= 0 {
		yMax = 1
	}
	pl.Y.Max = yMax * 1.12 // room for the marker labels
	for _, m := range p.Marks {
		c, ok := markColors[m.Kind]
		if !ok {
			c = markColors["stage"]
		}
		l, err := plotter.NewLine(plotter.XYs{{X: m.X, Y: 0}, {X: m.X, Y: yMax * 1.12}})
		if err != nil {
			return "", err
		}
		l.Color = c
		l.Width = vg.Points(0.8)
		l.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
		pl.Add(l)
	}
	if len(p.Marks) > 0 {
		labels, err := markLabels(p.Marks, yMax)
		if err != nil {
			return "", err
		}
		pl.Add(labels)
	}
	pl.Legend.Top = true
	w, h := p.Width, p.Height
	if w == 0 {
		w = 640
	}
	if h == 0 {
		h = 240
	}
	c := vgsvg.New(vg.Points(w), vg.Points(h))
	pl.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return "", err
	}
	out := buf.String()
	if i := strings.Index(out, "<svg"); i > 0 {
		out = out[i:] // inline: no XML declaration or comment
	}
	out = strings.Replace(out, "<svg ", fmt.Sprintf(`<svg role="img" aria-label=%q class="chart" `, template.HTMLEscapeString(p.Title)), 1)
	return template.HTML(out), nil
}

// markLabels writes each marker's label near the top, staggered over three
// rows so neighbours do not overlap.
func markLabels(ms []Marker, yMax float64) (*plotter.Labels, error) {
	xys := make(plotter.XYs, len(ms))
	ls := make([]string, len(ms))
	for i, m := range ms {
		xys[i] = plotter.XY{X: m.X, Y: yMax * (1.09 - 0.06*float64(i%3))}
		ls[i] = m.Label
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: ls})
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].Font.Size = vg.Points(7)
		l.TextStyle[i].Color = color.RGBA{60, 60, 60, 255}
		l.Offset.X = vg.Points(2)
	}
	return l, nil
}

// niceStep picks a tick step (1, 2, 5 x 10^k in the unit's steps) giving
// about n ticks over span.
func niceStep(span float64, n int, steps []float64) float64 {
	raw := span / float64(n)
	for _, s := range steps {
		if s >= raw {
			return s
		}
	}
	return steps[len(steps)-1] * math.Ceil(raw/steps[len(steps)-1])
}

func ticks(min, max, step float64, label func(float64) string) []plot.Tick {
	var out []plot.Tick
	start := math.Ceil(min/step) * step
	for v := start; v <= max+step/1e6; v += step {
		out = append(out, plot.Tick{Value: v, Label: label(v)})
		for k := 1; k < 5; k++ { // minor ticks
			if m := v + step*float64(k)/5; m <= max {
				out = append(out, plot.Tick{Value: m})
			}
		}
	}
	return out
}

// clockTicks label seconds as h:mm:ss at round steps.
type clockTicks struct{}

func (clockTicks) Ticks(min, max float64) []plot.Tick {
	step := niceStep(max-min, 6, []float64{1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400})
	return ticks(min, max, step, Clock)
}

// durationTicks label seconds as durations at round steps.
type durationTicks struct{}

func (durationTicks) Ticks(min, max float64) []plot.Tick {
	step := niceStep(max-min, 6, []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300, 600, 1800, 3600})
	return ticks(min, max, step, func(v float64) string { return Duration(v) })
}

// humanTicks label counts and rates for people (1.5k, 100M).
type humanTicks struct{}

func (humanTicks) Ticks(min, max float64) []plot.Tick {
	span := max - min
	if span <= 0 {
		span = 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(span/5)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if span/(m*mag) <= 6 {
			step = m * mag
			break
		}
	}
	return ticks(min, max, step, Human)
}
