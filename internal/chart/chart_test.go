package chart

import (
	"strings"
	"testing"
)

func TestHumanNumbers(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{Human(100_000_000), "100M"}, {Human(693_800), "693.8k"}, {Human(950), "950"}, {Human(1500), "1.5k"},
		{Rate(693_800), "693.8k/s"}, {Duration(2.35), "2.35 s"}, {Duration(0.118), "118 ms"}, {Duration(250), "4m10s"},
		{Clock(3725), "1:02:05"}, {Clock(0), "0:00:00"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestSVGHasAxesMarkersAndNoExternalReference(t *testing.T) {
	svg, err := SVG(Plot{Title: "Connected devices", XKind: ClockAxis, XLabel: "scenario time", YLabel: "devices",
		Series: []Series{{Name: "connected", Points: []Point{{0, 0}, {3600, 1_000_000}, {7200, 2_000_000}}}},
		Marks:  []Marker{{X: 1800, Label: "knockout", Kind: "stage"}, {X: 5400, Label: "drop 10%", Kind: "drop"}}})
	if err != nil {
		t.Fatal(err)
	}
	s := string(svg)
	for _, want := range []string{"<svg ", `aria-label="Connected devices"`, "1:00:00", "2:00:00", "knockout", "drop 10%", "2M", "scenario time"} {
		if !strings.Contains(s, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	if strings.Contains(s, "<?xml") || strings.Contains(s, "xlink:href=\"http") || strings.Contains(s, "url(http") {
		t.Error("the chart references something outside the file")
	}
}
