//go:build nocharts

package chart

import (
	"html"
	"html/template"
)

// SVG, in a binary built with -tags nocharts (the container image: the
// plotting library and its fonts are only for the load generator's reports),
// draws no chart: it says so in the report, in the chart's place.
func SVG(p Plot) (template.HTML, error) {
	return template.HTML(`<p class="nochart">` + html.EscapeString(p.Title) + `: no chart in this build (built with -tags nocharts); report.json has the figures.</p>`), nil
}
