package hostile_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/hostile"
	"github.com/stagecast/stagecast/internal/serve"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

const producerToken = "hostile-suite-7f3a9c1e5b2d4f60a8e1"

// countingEngine counts the existence lookups that reach the engine.
type countingEngine struct {
	*memengine.Engine
	lookups atomic.Int64
}

func (c *countingEngine) Exists(ctx context.Context, event string) (bool, error) {
	c.lookups.Add(1)
	return c.Engine.Exists(ctx, event)
}

// stack is the all-in-one server of `make run` (or a running one, black-box).
type stack struct {
	eng                        *countingEngine // nil black-box
	proxy                      *proxy.Server   // nil black-box
	wsURL, graphqlURL, bcURL   string
	proxyMetrics, graphMetrics string
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startStack serves a proxy, a broadcaster and a prefetch server on loopback
// with the given configs, through internal/serve (the binaries' limits).
func startStack(t *testing.T, pc proxy.Config, gc graph.ServerConfig) *stack {
	t.Helper()
	eng := &countingEngine{Engine: memengine.New(memengine.Config{})}
	pc.Logger, gc.Cache.Logger = quiet(), quiet()
	p, err := proxy.New(pc, eng)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := broadcaster.New(broadcaster.Config{Token: producerToken, Logger: quiet()}, eng)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := graph.NewServer(gc, eng)
	if err != nil {
		t.Fatal(err)
	}
	bound, err := serve.Listen([]serve.Server{
		{Name: "proxy", Addr: "127.0.0.1:0", Handler: p.Handler(), Upgrades: true},
		{Name: "broadcaster", Addr: "127.0.0.1:0", Handler: bc.Handler()},
		{Name: "prefetch", Addr: "127.0.0.1:0", Handler: pf.Handler()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = serve.Run(ctx, quiet(), bound, time.Second, nil); close(done) }()
	t.Cleanup(func() { cancel(); p.Close(); <-done })
	addr := func(i int) string { return bound[i].Listener.Addr().String() }
	return &stack{eng: eng, proxy: p, wsURL: "ws://" + addr(0) + "/v1/ws", bcURL: "http://" + addr(1),
		graphqlURL: "http://" + addr(2) + "/graphql", proxyMetrics: "http://" + addr(0) + "/metrics",
		graphMetrics: "http://" + addr(2) + "/metrics"}
}

// target is the stack under test: a running deployment when
// STAGECAST_HOSTILE_PROXY and STAGECAST_HOSTILE_GRAPHQL are set (black-box),
// else the in-process `make run` stack with its defaults (loopback exempt from
// per-IP limits, as in the dev server).
func target(t *testing.T) *stack {
	if ws, gql := os.Getenv("STAGECAST_HOSTILE_PROXY"), os.Getenv("STAGECAST_HOSTILE_GRAPHQL"); ws != "" && gql != "" {
		wu, _ := url.Parse(ws)
		gu, _ := url.Parse(gql)
		return &stack{wsURL: ws, graphqlURL: gql, proxyMetrics: "http://" + wu.Host + "/metrics", graphMetrics: "http://" + gu.Host + "/metrics",
			bcURL: os.Getenv("STAGECAST_HOSTILE_BROADCASTER")}
	}
	return startStack(t, proxy.Config{IPLimitExempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, graph.ServerConfig{})
}

func (s *stack) metrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mfs, err := hostile.Metrics(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name := range mfs {
		out[name] = hostile.Value(mfs, name)
		out[name+"#series"] = float64(hostile.Series(mfs, name))
	}
	return out
}

// floodSeconds is how long the flood runs: 3 s in make test,
// STAGECAST_HOSTILE_SECONDS for the black-box figures (60 in docs/security.md).
func floodSeconds() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("STAGECAST_HOSTILE_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 3 * time.Second
}

// One client with no credential floods made-up event ids (16 per sub frame,
// every 60 ms, reconnecting whenever it is closed). Bound: no topic for any of
// them, the proxy's goroutines and heap back to where they were, and (in
// process) engine lookups within LookupRate.
func TestFloodMadeUpEvents(t *testing.T) {
	s := target(t)
	runtime.GC()
	before := s.metrics(t, s.proxyMetrics)
	d := floodSeconds()
	res, err := hostile.FloodMadeUpEvents(context.Background(), s.wsURL, 16, 60*time.Millisecond, d)
	if err != nil {
		t.Fatal(err)
	}
	during := s.metrics(t, s.proxyMetrics)
	var after map[string]float64
	// Goroutines of closed connections (handshake closes) wind down.
	waitfor.True(t, 15*time.Second, "proxy goroutines back near the baseline", func() bool {
		runtime.GC()
		after = s.metrics(t, s.proxyMetrics)
		return after["go_goroutines"] <= before["go_goroutines"]+20
	})
	t.Logf("flood %v: %d connections, %d frames, %d made-up ids, closes %v, refused %d", d, res.Connections, res.Frames, res.Events, res.Closes, res.Refused)
	t.Logf("topics %v -> %v; goroutines %v -> %v; heap in use %.1f -> %.1f MiB; RSS %.1f -> %.1f MiB",
		before["stagecast_proxy_events"], during["stagecast_proxy_events"], before["go_goroutines"], after["go_goroutines"],
		before["go_memstats_heap_inuse_bytes"]/(1<<20), after["go_memstats_heap_inuse_bytes"]/(1<<20),
		before["process_resident_memory_bytes"]/(1<<20), after["process_resident_memory_bytes"]/(1<<20))
	if res.Connections == 0 && res.Refused == 0 {
		t.Fatal("the flood neither connected nor was refused")
	}
	if res.Connections > 0 && res.Events < 16 {
		t.Fatalf("the flood named only %d ids", res.Events)
	}
	if during["stagecast_proxy_events"] > 16 || after["stagecast_proxy_events"] > 16 {
		t.Fatalf("made-up events left %v topics (bound 16)", during["stagecast_proxy_events"])
	}
	if grow := after["go_memstats_heap_inuse_bytes"] - before["go_memstats_heap_inuse_bytes"]; grow > 20<<20 {
		t.Fatalf("heap grew %.1f MiB (bound 20)", grow/(1<<20))
	}
	if res.Connections > 1 && res.Closes[websocket.StatusPolicyViolation] == 0 {
		t.Fatalf("the flooding client was never closed for its errors (closes %v)", res.Closes)
	}
	if s.eng != nil {
		// LookupRate 1000/s with a burst of 1000: at most 1000 + 1000 x d.
		if n := s.eng.lookups.Load(); n > int64(1000+1000*d.Seconds()) {
			t.Fatalf("%d engine lookups for %v of flood", n, d)
		}
		t.Logf("engine lookups: %d for %d ids", s.eng.lookups.Load(), res.Events)
	}
}

// 1,000 connections, each naming its own platform: the connections metric
// keeps a fixed set of series.
func TestPlatformLabelsBounded(t *testing.T) {
	s := target(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 1000
	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	for i := 0; i < n; i++ {
		c, _, err := websocket.Dial(ctx, fmt.Sprintf("%s?platform=plat-%d", s.wsURL, i), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if s.proxy != nil { // the client sees 101 before the proxy publishes the connection
		waitfor.True(t, 10*time.Second, "every connection published", func() bool { return s.proxy.Connections() == n })
	}
	m := s.metrics(t, s.proxyMetrics)
	series := m["stagecast_proxy_connections#series"]
	t.Logf("%d platforms -> %v connection series, %v connections", n, series, m["stagecast_proxy_connections"])
	if series > 10 {
		t.Fatalf("%v series for %d client-chosen platforms (bound 10)", series, n)
	}
	if s.proxy != nil && m["stagecast_proxy_connections"] != n {
		t.Fatalf("connections metric %v, want %d", m["stagecast_proxy_connections"], n)
	}
}

// The aliased query against a large stage map is capped, whoever sends it.
func TestGraphQLAmplification(t *testing.T) {
	s := target(t)
	event := "amplify"
	if s.eng != nil {
		// An 800 KB map: 40 stages of 20 KB each.
		stages := map[string]any{}
		for i := 0; i < 40; i++ {
			stages[fmt.Sprintf("stage-%d", i)] = map[string]any{"default": map[string]string{"blob": strings.Repeat("x", 20<<10)}}
		}
		raw, _ := json.Marshal(map[string]any{"stages": stages})
		if _, err := s.eng.PutStageMap(context.Background(), event, raw, 1); err != nil {
			t.Fatal(err)
		}
	} else if e := os.Getenv("STAGECAST_HOSTILE_EVENT"); e != "" {
		event = e
	}
	q := hostile.Aliased(event, 60)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var worst time.Duration
	for i := 0; i < 5; i++ {
		status, n, took, err := hostile.Post(ctx, s.graphqlURL, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		worst = max(worst, took)
		t.Logf("60-alias query (%d bytes): HTTP %d, %d bytes in %v", len(q), status, n, took.Round(time.Microsecond))
		if n > 2<<20 {
			t.Fatalf("response of %d bytes (bound 2 MiB)", n)
		}
	}
	// The answer says why.
	body := fmt.Sprintf(`{"query":%q}`, q)
	resp, err := http.Post(s.graphqlURL, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Errors []struct {
			Extensions map[string]string `json:"extensions"`
		} `json:"errors"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	codes := map[string]int{}
	for _, e := range out.Errors {
		codes[e.Extensions["code"]]++
	}
	if codes["COST_LIMIT"] == 0 {
		t.Fatalf("no COST_LIMIT error: %v", codes)
	}
	t.Logf("worst of 5: %v; errors %v", worst.Round(time.Microsecond), codes)
}

// Queries past the limits are refused before any work.
func TestOversizedQueries(t *testing.T) {
	s := target(t)
	long := "{" + strings.Repeat(" liveEvent(id: \"x\") { id }", 200) + "}" // ~5 KiB > MaxQueryLength
	status, _, _, err := hostile.Post(context.Background(), s.graphqlURL, long, nil)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a %d-byte query: HTTP %d, want 413", len(long), status)
	}
	huge := s.graphqlURL + "?query=" + url.QueryEscape(strings.Repeat("{ liveEvent(id: \"x\") { id } }", 2000)) // ~100 KiB URL
	resp, err := http.Get(huge)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a %d-byte GET: HTTP %d, want 431", len(huge), resp.StatusCode)
	}
	big := `{"query":"{ liveEvent(id: \"x\") { id } }","variables":{"pad":"` + strings.Repeat("x", 64<<10) + `"}}`
	resp, err = http.Post(s.graphqlURL, "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 64 KiB body: HTTP %d, want 413", resp.StatusCode)
	}
}

// Distinct queries (a cache-busting client) cannot grow the query cache past
// its byte bound, and error answers are not cached at all.
func TestQueryCacheBounded(t *testing.T) {
	s := startStack(t, proxy.Config{}, graph.ServerConfig{GraphQL: graph.Config{QueryCacheBytes: 64 << 10}})
	stages := map[string]any{"a": map[string]any{"default": map[string]string{"blob": strings.Repeat("y", 8<<10)}}}
	raw, _ := json.Marshal(map[string]any{"stages": stages})
	if _, err := s.eng.PutStageMap(context.Background(), "ev", raw, 1); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		q := fmt.Sprintf(`query Q%d { liveEvent(id: "ev") { stages { payload } } }`, i)
		if status, _, _, err := hostile.Post(ctx, s.graphqlURL, q, nil); err != nil || status != 200 {
			t.Fatalf("query %d: %d %v", i, status, err)
		}
		if status, _, _, err := hostile.Post(ctx, s.graphqlURL, fmt.Sprintf(`{ liveEvent(id: "missing-%d") { id } }`, i), nil); err != nil || status != 200 {
			t.Fatalf("not-found query %d: %d %v", i, status, err)
		}
	}
	m := s.metrics(t, s.graphMetrics)
	t.Logf("query cache: %v bytes after 100 distinct 8 KiB answers and 100 NOT_FOUND answers", m["stagecast_graph_query_cache_bytes"])
	if b := m["stagecast_graph_query_cache_bytes"]; b > 64<<10 || b < 8<<10 {
		t.Fatalf("query cache holds %v bytes (bound 64 KiB, and it should hold some)", b)
	}
	mfs, err := hostile.Metrics(ctx, s.graphMetrics)
	if err != nil {
		t.Fatal(err)
	}
	uncacheable := 0.0
	for _, mm := range mfs["stagecast_graph_query_cache_total"].GetMetric() {
		if mm.GetLabel()[0].GetValue() == "uncacheable" {
			uncacheable = mm.GetCounter().GetValue()
		}
	}
	if uncacheable < 100 {
		t.Fatalf("%v uncacheable answers; the 100 NOT_FOUND (error-only) answers must not be cached", uncacheable)
	}
}

// Bad bytes: invalid UTF-8 closes 1007, an oversized frame 1009, a deeply
// nested frame is answered and the connection survives; a client that keeps
// triggering errors without reading them is closed (1008).
func TestBadBytes(t *testing.T) {
	s := startStack(t, proxy.Config{}, graph.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	expectClose := func(frame []byte, want websocket.StatusCode) {
		t.Helper()
		ws, _, err := websocket.Dial(ctx, s.wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		_ = ws.Write(ctx, websocket.MessageText, frame)
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				if got := websocket.CloseStatus(err); got != want {
					t.Fatalf("frame %.40q: closed with %v (%v), want %v", frame, got, err, want)
				}
				return
			}
		}
	}
	expectClose([]byte("{\"op\":\"sub\",\"events\":{\"\xff\xfe\":0}}"), websocket.StatusInvalidFramePayloadData)
	expectClose([]byte(`{"op":"sub","events":{"a":0},"pad":"`+strings.Repeat("x", 8<<10)+`"}`), websocket.StatusMessageTooBig)

	ws, _, err := websocket.Dial(ctx, s.wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	nested := `{"op":"sub","events":{"a":` + strings.Repeat("[", 1900) + strings.Repeat("]", 1900) + `}}`
	if err := ws.Write(ctx, websocket.MessageText, []byte(nested)); err != nil {
		t.Fatal(err)
	}
	_, b, err := ws.Read(ctx)
	if f, perr := wire.ParseProxyFrame(b); err != nil || perr != nil || f.Code != wire.CodeBadRequest {
		t.Fatalf("nested frame: %s %v %v", b, err, perr)
	}

	// A never-reading client sending frames that each earn an error: closed
	// after ErrorBudget (30) errors, without the proxy waiting on its reads.
	silent, _, err := websocket.Dial(ctx, s.wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.CloseNow()
	// The client sees 101 before the proxy publishes the connection.
	waitfor.True(t, 5*time.Second, "both connections published", func() bool { return s.proxy.Connections() == 2 })
	for i := 0; i < 40; i++ {
		if err := silent.Write(ctx, websocket.MessageText, []byte(`{"op":"nope"}`)); err != nil {
			break
		}
	}
	waitfor.True(t, 10*time.Second, "the error-flooding client closed", func() bool { return s.proxy.Connections() == 1 })
	m := s.metrics(t, s.proxyMetrics)
	if m["stagecast_proxy_bad_frames_total"] < 30 {
		t.Fatalf("bad frames counted: %v", m["stagecast_proxy_bad_frames_total"])
	}
}

// Device tokens: forged, expired, unknown-key and missing tokens get 401 and no
// subscription; a valid one subscribes only within its evs; at exp the proxy
// closes with 4003.
func TestDeviceTokens(t *testing.T) {
	signer, ver, err := devicetoken.NewTestPair("k1")
	if err != nil {
		t.Fatal(err)
	}
	stranger, _, _ := devicetoken.NewKeyPair("k1")
	s := startStack(t, proxy.Config{Tokens: ver, RequireToken: true}, graph.ServerConfig{})
	for _, ev := range []string{"fight-1", "other"} {
		if _, err := s.eng.SetStage(context.Background(), engine.SetRequest{Event: ev, Key: "pre-show", TS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good, _ := signer.Mint(devicetoken.Claims{Device: "d1", Platform: "tv", Events: wire.Patterns{"fight-*"}}, time.Hour)
	forged, _ := stranger.Mint(devicetoken.Claims{Device: "d1"}, time.Hour)
	expired, _ := signer.Mint(devicetoken.Claims{Device: "d1"}, time.Millisecond)
	waitfor.True(t, 2*time.Second, "the short token expired", func() bool { _, err := ver.Verify(expired); return err != nil })
	for name, tok := range map[string]string{"none": "", "forged": forged, "expired": expired, "garbage": "a.b.c"} {
		h := http.Header{}
		if tok != "" {
			h.Set("Authorization", "Bearer "+tok)
		}
		_, resp, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{HTTPHeader: h})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s token: %v %v, want 401", name, err, resp)
		}
		// And in the query string (browsers).
		_, resp, err = websocket.Dial(ctx, s.wsURL+"?token="+url.QueryEscape(tok), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s token in the query: %v %v, want 401", name, err, resp)
		}
	}
	ws, _, err := websocket.Dial(ctx, s.wsURL+"?platform=mobile&device=spoofed", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + good}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	_ = ws.Write(ctx, websocket.MessageText, []byte(`{"op":"sub","events":{"other":0}}`))
	_, b, _ := ws.Read(ctx)
	if f, _ := wire.ParseProxyFrame(b); f.Code != wire.CodeUnauthorized || f.Event != "other" {
		t.Fatalf("sub outside evs: %s", b)
	}
	_ = ws.Write(ctx, websocket.MessageText, []byte(`{"op":"sub","events":{"fight-1":0}}`))
	_, b, _ = ws.Read(ctx)
	if f, _ := wire.ParseProxyFrame(b); f.Op != wire.OpStage || f.Event != "fight-1" {
		t.Fatalf("sub inside evs: %s", b)
	}
	m := s.metrics(t, s.proxyMetrics)
	if m["stagecast_proxy_subscriptions"] != 1 || m["stagecast_proxy_events"] != 1 {
		t.Fatalf("subscriptions %v, events %v: want 1 and 1 (the rejected tokens and the evs refusal made none)",
			m["stagecast_proxy_subscriptions"], m["stagecast_proxy_events"])
	}
	// The token's plt (tv) overrides the query's platform (mobile).
	mfs, _ := hostile.Metrics(ctx, s.proxyMetrics)
	for _, mm := range mfs["stagecast_proxy_connections"].GetMetric() {
		if mm.GetGauge().GetValue() == 1 && mm.GetLabel()[0].GetValue() != "tv" {
			t.Fatalf("connection counted as platform %q, the token says tv", mm.GetLabel()[0].GetValue())
		}
	}

	short, _ := signer.Mint(devicetoken.Claims{Device: "d2"}, 1500*time.Millisecond)
	ws2, _, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + short}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.CloseNow()
	for {
		if _, _, err := ws2.Read(ctx); err != nil {
			if st := websocket.CloseStatus(err); st != websocket.StatusCode(wire.CloseTokenExpired) {
				t.Fatalf("at exp: closed with %v (%v), want 4003", st, err)
			}
			break
		}
	}
}

// Per-source-IP limits, when loopback is not exempt: concurrent connections and
// new connections per second.
func TestPerIPLimits(t *testing.T) {
	s := startStack(t, proxy.Config{MaxConnsPerIP: 5, IPAdmitRate: -1}, graph.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.CloseNow()
		}
	}()
	for i := 0; i < 5; i++ {
		c, _, err := websocket.Dial(ctx, s.wsURL, nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		open = append(open, c)
	}
	if _, resp, err := websocket.Dial(ctx, s.wsURL, nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("6th connection from one IP: %v %v, want 429", err, resp)
	}
	// The client sees 101 before the proxy publishes the connection: wait for
	// all five, then for the one closed to be gone.
	waitfor.True(t, 5*time.Second, "five connections", func() bool { return s.proxy.Connections() == 5 })
	open[0].CloseNow()
	waitfor.True(t, 5*time.Second, "a place freed", func() bool { return s.proxy.Connections() == 4 })
	c, _, err := websocket.Dial(ctx, s.wsURL, nil)
	if err != nil {
		t.Fatalf("after one left: %v", err)
	}
	open = append(open, c)

	r := startStack(t, proxy.Config{IPAdmitRate: 0.001, IPAdmitBurst: 3}, graph.ServerConfig{})
	refused := 0
	for i := 0; i < 6; i++ {
		c, resp, err := websocket.Dial(ctx, r.wsURL, nil)
		if err == nil {
			open = append(open, c)
		} else if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused != 3 {
		t.Fatalf("6 rapid connections with a burst of 3: %d refused, want 3", refused)
	}
}

// A proxy holds at most MaxEvents topics, however many real events devices ask
// for; churning subscriptions is bounded by the per-connection budget.
func TestEventCapAndChurn(t *testing.T) {
	s := startStack(t, proxy.Config{MaxEvents: 10, IPLimitExempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, graph.ServerConfig{})
	for i := 0; i < 40; i++ {
		if _, err := s.eng.PutStageMap(context.Background(), fmt.Sprintf("real-%d", i), []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	codes := map[wire.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		ws, _, err := websocket.Dial(ctx, s.wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		subs := map[string]uint64{}
		for i := 0; i < 10; i++ {
			subs[fmt.Sprintf("real-%d", c*10+i)] = 0
		}
		_ = ws.Write(ctx, websocket.MessageText, wire.AppendSub(nil, subs))
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			defer rcancel()
			for {
				_, b, err := ws.Read(rctx)
				if err != nil {
					return
				}
				if f, _ := wire.ParseProxyFrame(b); f.Op == wire.OpError {
					mu.Lock()
					codes[f.Code]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	m := s.metrics(t, s.proxyMetrics)
	t.Logf("40 real events asked for on a proxy capped at 10: %v topics, errors %v", m["stagecast_proxy_events"], codes)
	if m["stagecast_proxy_events"] != 10 || codes[wire.CodeEventLimit] != 30 {
		t.Fatalf("topics %v (want 10), event_limit errors %d (want 30)", m["stagecast_proxy_events"], codes[wire.CodeEventLimit])
	}

	// Churn: sub/unsub one real event, up to 100 rounds (13 frames a second,
	// within the frame rate): 60 new subscriptions a minute, then rate_limited.
	s = startStack(t, proxy.Config{}, graph.ServerConfig{})
	if _, err := s.eng.PutStageMap(context.Background(), "real-39", []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	ws, _, err := websocket.Dial(cctx, s.wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	frames := make(chan wire.ProxyFrame, 256)
	go func() {
		for {
			_, b, err := ws.Read(cctx)
			if err != nil {
				close(frames)
				return
			}
			f, _ := wire.ParseProxyFrame(b)
			frames <- f
		}
	}()
	limited := -1
	for i := 0; i < 100 && limited < 0; i++ {
		_ = ws.Write(cctx, websocket.MessageText, []byte(`{"op":"sub","events":{"real-39":0}}`))
		_ = ws.Write(cctx, websocket.MessageText, []byte(`{"op":"unsub","events":["real-39"]}`))
		tick := time.After(150 * time.Millisecond) // 2 frames per round: under 20 frames/s
	drain:
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatalf("closed after %d rounds", i)
				}
				// The budget's answer names the event (the frame-rate limit's does not).
				if f.Code == wire.CodeRateLimited && f.Event == "real-39" {
					limited = i
				}
			case <-tick:
				break drain
			}
		}
	}
	if limited != 60 {
		t.Fatalf("sub/unsub churn: rate_limited at round %d, want round 60 (a budget of 60 a minute)", limited)
	}
}

// A browser page from another origin cannot open a device connection; native
// devices (no Origin) and allowed origins can.
func TestOriginPatterns(t *testing.T) {
	s := startStack(t, proxy.Config{OriginPatterns: []string{"app.example.com"}}, graph.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(origin string) int {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, resp, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			c.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	for origin, want := range map[string]int{"": 101, "https://app.example.com": 101, "https://evil.example.net": 403} {
		if got := dial(origin); got != want {
			t.Errorf("Origin %q: %d, want %d", origin, got, want)
		}
	}
}

// The producer API: no token, a wrong token and a token for other events get
// 401 / 403 and change nothing.
func TestProducerTokens(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	bc, err := broadcaster.New(broadcaster.Config{Logger: quiet(), Producers: []broadcaster.Producer{
		{Name: "fights", Token: "f1ghts-9d8c7b6a5e4f3a2b1c0d", Events: []string{"fight-*"}},
		{Name: "ops", Token: "0ps-1a2b3c4d5e6f7a8b9c0d1e2f"},
	}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	bound, err := serve.Listen([]serve.Server{{Name: "broadcaster", Addr: "127.0.0.1:0", Handler: bc.Handler()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = serve.Run(ctx, quiet(), bound, time.Second, nil) }()
	base := "http://" + bound[0].Listener.Addr().String()
	post := func(tok, event string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/events/"+event+"/stage", strings.NewReader(`{"stage":"round-1"}`))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		tok, event string
		want       int
	}{
		{"", "fight-1", 401}, {"f1ghts-9d8c7b6a5e4f3a2b1c0X", "fight-1", 401},
		{"f1ghts-9d8c7b6a5e4f3a2b1c0d", "nfl-1", 403}, {"f1ghts-9d8c7b6a5e4f3a2b1c0d", "fight-1", 200},
		{"0ps-1a2b3c4d5e6f7a8b9c0d1e2f", "nfl-1", 200},
	} {
		if got := post(c.tok, c.event); got != c.want {
			t.Errorf("token %q on %s: %d, want %d", c.tok, c.event, got, c.want)
		}
	}
	for ev, want := range map[string]bool{"fight-1": true, "nfl-1": true} {
		if ok, _ := eng.Exists(context.Background(), ev); ok != want {
			t.Errorf("%s exists = %v", ev, ok)
		}
	}
	if recent, _ := eng.Recent(context.Background(), "nfl-1", 10); len(recent) != 1 {
		t.Fatalf("nfl-1 has %d versions: the refused request changed something", len(recent))
	}
}
