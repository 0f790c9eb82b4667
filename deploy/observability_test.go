package deploy_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// recorder is a Registerer that keeps the names of every metric registered.
type recorder map[string]bool

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r[m[1]] = true
		}
	}
	return nil
}

func (r recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r recorder) Unregister(prometheus.Collector) bool { return true }

// stagecastMetrics registers every stagecast server's metrics and returns their names.
func stagecastMetrics(t *testing.T) recorder {
	t.Helper()
	rec := recorder{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng := memengine.New(memengine.Config{})
	p, err := proxy.New(proxy.Config{Registerer: rec, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if _, err := broadcaster.New(broadcaster.Config{Token: "metrics-test-token-0123456789", Registerer: rec, Logger: quiet}, eng); err != nil {
		t.Fatal(err)
	}
	cache, err := prefetch.NewCache(prefetch.Config{Registerer: rec, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	shed, err := prefetch.NewShedder(prefetch.ShedConfig{}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := graph.New(graph.Config{Registerer: rec}, cache, shed); err != nil {
		t.Fatal(err)
	}
	if len(rec) < 20 {
		t.Fatalf("only %d metrics recorded", len(rec))
	}
	return rec
}

var metricRef = regexp.MustCompile(`stagecast_[a-z0-9_]+`)

// checkExprs fails for any stagecast_* series an expression uses that no
// server registers (histogram series resolve to their base name).
func checkExprs(t *testing.T, where string, exprs []string, known recorder) {
	t.Helper()
	used := 0
	for _, e := range exprs {
		for _, name := range metricRef.FindAllString(e, -1) {
			base := name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && known[b] {
					base = b
				}
			}
			if !known[base] {
				t.Errorf("%s uses %s, which no stagecast server exports", where, name)
			}
			used++
		}
	}
	if used == 0 {
		t.Fatalf("%s references no stagecast metric", where)
	}
}

func TestDashboardUsesRealMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/stagecast-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	checkExprs(t, "dashboard", exprs, stagecastMetrics(t))
}

func TestAlertsUseRealMetricsAndHaveRunbooks(t *testing.T) {
	b, err := os.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(ops), "\n") {
		if h, ok := strings.CutPrefix(line, "### "); ok {
			anchors[githubAnchor(h)] = true
		}
	}
	known := stagecastMetrics(t)
	var exprs []string
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			exprs = append(exprs, r.Expr)
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q", r.Alert, s)
			}
			rb := r.Annotations["runbook"]
			anchor, ok := strings.CutPrefix(rb, "docs/operations.md#")
			if !ok || !anchors[anchor] {
				t.Errorf("alert %s: runbook %q is not a section of docs/operations.md", r.Alert, rb)
			}
		}
	}
	if n < 5 {
		t.Fatalf("only %d alerts", n)
	}
	checkExprs(t, "alerts", exprs, known)
}

// githubAnchor turns a heading into its GitHub anchor.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	var b strings.Builder
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}
