// Package chart draws the reports' charts with gonum/plot into inline SVG
// (fonts by name, nothing fetched: a report stays one file that opens
// offline), and formats numbers for people. The load generator's reports
// (simulate and live) and the delivery report's HTML use it.
package chart

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Point is one point of a series.
type Point struct{ X, Y float64 }

// Series is one named curve.
type Series struct {
	Name   string
	Points []Point
	Dashed bool
}

// Marker is a labelled vertical line (a stage change, a drop, a fault).
type Marker struct {
	X     float64
	Label string
	Kind  string // "stage", "drop", "fault": its colour
}

// Axis kinds of X.
const (
	ClockAxis    = "clock"   // seconds shown as h:mm:ss
	DurationAxis = "seconds" // seconds shown as durations (ms, s)
)

// Plot is one chart.
type Plot struct {
	Title  string
	XKind  string // ClockAxis or DurationAxis
	XLabel string
	YLabel string
	YMax   float64 // 0: from the data
	Series []Series
	Marks  []Marker
	Bars   bool    // draw the first series as bars (a histogram)
	Width  float64 // points; default 640
	Height float64 // points; default 240
}

// Clock formats seconds of scenario time as h:mm:ss.
func Clock(s float64) string {
	d := time.Duration(math.Round(s)) * time.Second
	return fmt.Sprintf("%d:%02d:%02d", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60)
}

// Duration formats seconds for people: 118 ms, 2.35 s, 4m10s.
func Duration(s float64) string {
	switch {
	case s == 0:
		return "0"
	case s < 1:
		return trim(fmt.Sprintf("%.3g", s*1000)) + " ms"
	case s < 60:
		return trim(fmt.Sprintf("%.3g", s)) + " s"
	}
	return time.Duration(math.Round(s) * float64(time.Second)).String()
}

// Human formats a count: 950, 1.5k, 693.8k, 100M.
func Human(v float64) string {
	if math.Abs(v) < 1000 {
		return trim(fmt.Sprintf("%.4g", v))
	}
	num, unit := humanize.ComputeSI(v)
	return trim(fmt.Sprintf("%.4g", num)) + unit
}

// Rate formats a per-second rate: 693.8k/s.
func Rate(v float64) string { return Human(v) + "/s" }

func trim(s string) string {
	if strings.Contains(s, ".") && !strings.ContainsAny(s, "e") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
