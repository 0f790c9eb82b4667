package broadcaster_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine/memengine"
)

// The console page is served without auth, holds no secret and locks itself
// down (CSP: scripts only from the origin, no framing); its data endpoints
// need a token and show a producer only its events.
func TestConsoleEndpoints(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	const alice = "al1ce-7c6b5a4f3e2d1c0b9a8f"
	s, err := broadcaster.New(broadcaster.Config{Token: token, Producers: []broadcaster.Producer{{Name: "alice", Token: alice, Events: []string{"fight-*"}}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)

	for _, path := range []string{"/console", "/console/", "/console/console.js", "/console/console.css"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.StatusCode != 200 || !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") ||
			strings.Contains(string(body), token) || len(body) < 100 {
			t.Fatalf("%s: %d, CSP %q, %d bytes", path, resp.StatusCode, csp, len(body))
		}
	}

	ctx := context.Background()
	admin := &producer.Client{BaseURL: ts.URL, Token: token}
	for _, ev := range []string{"fight-1", "other"} {
		if _, err := admin.SetStage(ctx, ev, "round-1", nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	get := func(tok, path string) (int, map[string]json.RawMessage) {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, _ := get("", "/v1/events"); code != 401 {
		t.Fatalf("events without a token: %d", code)
	}
	if code, out := get(alice, "/v1/whoami"); code != 200 || string(out["producer"]) != `"alice"` || string(out["events"]) != `["fight-*"]` {
		t.Fatalf("whoami: %d %v", code, out)
	}
	_, out := get(alice, "/v1/events")
	if ev := string(out["events"]); !strings.Contains(ev, `"fight-1"`) || strings.Contains(ev, `"other"`) {
		t.Fatalf("alice's events: %s", ev)
	}
	_, out = get(token, "/v1/events?limit=10")
	if ev := string(out["events"]); !strings.Contains(ev, `"fight-1"`) || !strings.Contains(ev, `"other"`) {
		t.Fatalf("all events: %s", ev)
	}
	if code, _ := get(token, "/v1/events?limit=100000"); code != 400 {
		t.Fatalf("limit past the bound: %d", code)
	}
	code, out := get(alice, "/v1/events/fight-1/audit")
	if code != 200 || !strings.Contains(string(out["audit"]), `"producer":"default","action":"set_stage","stage":"round-1"`) {
		t.Fatalf("audit: %d %s", code, out["audit"])
	}
	if code, _ := get(alice, "/v1/events/other/audit"); code != 403 {
		t.Fatalf("audit of another producer's event: %d", code)
	}
}

// The delivery report as HTML: summary, the time-to-device chart with a curve
// per proxy, the per-proxy table, nothing from outside the file.
func TestReportHTML(t *testing.T) {
	p50, p99, p100 := int64(120), int64(480), int64(900)
	r := broadcaster.Report{Event: "fight", V: 7, Stage: "knockout", TS: 1764316800000, Devices: 2_500_000, Sent: 2_500_000, Acked: 2_400_000,
		SentPct: 100, AckedPct: 96, SentMS: map[string]*int64{"p50": &p50, "p90": &p99, "p99": &p99, "p100": &p100}, Proxies: 2,
		PerProxy: []broadcaster.ProxyReport{{Proxy: "p-1", Devices: 1_250_000, Sent: 1_250_000, SentMS: map[string]*int64{"p50": &p50, "p99": &p99, "p100": &p100}},
			{Proxy: "p-2", Devices: 1_250_000, Sent: 1_250_000, SentMS: map[string]*int64{"p50": &p50, "p99": &p99, "p100": &p100}}}}
	var b strings.Builder
	if err := broadcaster.WriteReportHTML(&b, r); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, want := range []string{`id="summary"`, "2.5M devices", "96.0%", "120 ms", "900 ms", "<svg ", ">p-1<", ">p-2<", "after the change"} {
		if !strings.Contains(html, want) {
			t.Errorf("report HTML lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", " src=", "@import", "url(http"} {
		if strings.Contains(html, bad) {
			t.Errorf("report HTML references something outside: %q", bad)
		}
	}
}
