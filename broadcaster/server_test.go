package broadcaster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

const token = "test-producer-token-123456"

func start(t *testing.T) (*producer.Client, *memengine.Engine, string) {
	t.Helper()
	eng := memengine.New(memengine.Config{})
	s, err := broadcaster.New(broadcaster.Config{Token: token, PublicReads: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &producer.Client{BaseURL: ts.URL, Token: token}, eng, ts.URL
}

// serve starts a broadcaster with cfg (quiet unless cfg.Logger is set) on eng
// and returns it with its URL; both stop when the test ends.
func serve(t *testing.T, cfg broadcaster.Config, eng broadcaster.Engine) (*broadcaster.Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := broadcaster.New(cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return s, hs.URL
}

func apiErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var ae *producer.APIError
	if !errors.As(err, &ae) || ae.Status != status || ae.Code != code || ae.Msg == "" {
		t.Fatalf("err = %v, want %d %s with a message", err, status, code)
	}
}

func TestAuth(t *testing.T) {
	c, eng, _ := start(t)
	ctx := context.Background()
	for _, tok := range []string{"", "wrong", token + "x"} {
		bad := *c
		bad.Token = tok
		_, err := bad.SetStage(ctx, "ev", "round-1", nil, "")
		apiErr(t, err, 401, "unauthorized")
		_, err = bad.Report(ctx, "ev", 0)
		apiErr(t, err, 401, "unauthorized")
	}
	if rec, _ := eng.Recent(ctx, "ev", 5); len(rec) != 0 {
		t.Fatalf("an unauthorized call changed state: %+v", rec)
	}
	// Reads are public by default.
	pub := *c
	pub.Token = ""
	_, err := pub.Get(ctx, "ev")
	apiErr(t, err, 404, "not_found")
}

func TestSetGetAndIdempotency(t *testing.T) {
	c, _, _ := start(t)
	ctx := context.Background()
	before := time.Now().UnixMilli()
	r, err := c.SetStage(ctx, "fight-2026-11-15", "round-3", nil, "k1")
	if err != nil || r.V == 0 || r.Stage != "round-3" || r.TS < before {
		t.Fatalf("set: %+v %v", r, err)
	}
	again, err := c.SetStage(ctx, "fight-2026-11-15", "round-3", nil, "k1")
	if err != nil || again != r {
		t.Fatalf("retry: %+v %v, want %+v", again, err, r)
	}
	_, err = c.SetStage(ctx, "fight-2026-11-15", "knockout", nil, "k1")
	apiErr(t, err, 409, "idempotency_conflict")
	g, err := c.Get(ctx, "fight-2026-11-15")
	if err != nil || g != r {
		t.Fatalf("get: %+v %v", g, err)
	}
}

func TestValidation(t *testing.T) {
	_, _, url := start(t)
	cases := []struct {
		path, body, idem string
		status           int
		code             string
	}{
		{"/v1/events/BAD/stage", `{"stage":"a"}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"Round 3"}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":""}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"a","extra":1}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"a"} {}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `not json`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"a","target":{"platforms":["TV"]}}`, "", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"a"}`, "has space", 400, "bad_request"},
		{"/v1/events/ev/stage", `{"stage":"` + strings.Repeat("a", 20000) + `"}`, "", 413, "too_large"},
		{"/v1/nope", `{}`, "", 404, "not_found"},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodPost, url+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+token)
		if tc.idem != "" {
			req.Header.Set("Idempotency-Key", tc.idem)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), `"code":"`+tc.code+`"`) {
			t.Errorf("%s %.40s: %d %s, want %d %s", tc.path, tc.body, resp.StatusCode, b, tc.status, tc.code)
		}
	}
}

func TestReportMerge(t *testing.T) {
	c, eng, _ := start(t)
	ctx := context.Background()
	r, _ := c.SetStage(ctx, "ev", "round-1", nil, "")
	now := time.Now().UnixMilli()
	// p1: 60 devices, all sent (50 within 10 ms, 10 within 100 ms); p2: 40 devices,
	// 30 sent within 20 ms; p3 reported long ago: its sends count, its devices not.
	put := func(proxy string, at, devices int64, sent, acked uint64, lat []engine.Bucket) {
		err := eng.PutDelivery(ctx, engine.DeliveryReport{Proxy: proxy, AtMS: at, Events: []engine.EventDelivery{{
			Event: "ev", Devices: devices, Versions: []engine.VersionDelivery{{V: r.V, Sent: sent, Acked: acked, Latency: lat}}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	put("p1", now, 60, 60, 55, []engine.Bucket{{UpperMS: 10, Count: 50}, {UpperMS: 100, Count: 10}})
	put("p2", now, 40, 30, 30, []engine.Bucket{{UpperMS: 20, Count: 30}})
	put("p3", now-10*60*1000, 5, 5, 0, []engine.Bucket{{UpperMS: 500, Count: 5}})
	rep, err := c.Report(ctx, "ev", 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Devices != 100 || rep.Sent != 95 || rep.Acked != 85 || rep.Proxies != 3 || rep.StaleProxies != 1 || rep.Stage != "round-1" {
		t.Fatalf("report %+v", rep)
	}
	// 50% of 100 = 50 sends: reached in the 10 ms bucket; 90% = 90: the 100 ms
	// bucket (50+30+10); 99% and 100% are never reached (95 sent).
	if rep.SentMS["p50"] == nil || *rep.SentMS["p50"] != 10 || rep.SentMS["p90"] == nil || *rep.SentMS["p90"] != 100 {
		t.Fatalf("p50/p90 = %v / %v", rep.SentMS["p50"], rep.SentMS["p90"])
	}
	if rep.SentMS["p99"] != nil || rep.SentMS["p100"] != nil {
		t.Fatalf("p99/p100 reported as reached with 95 of 100 sent: %v / %v", *rep.SentMS["p99"], rep.SentMS["p100"])
	}
	if rep.SentPct != 95 {
		t.Fatalf("sent_pct %v", rep.SentPct)
	}
	_, err = c.Report(ctx, "ev", 7)
	if err != nil {
		t.Fatalf("report of a version with no figures: %v", err)
	}
}

func TestConfig(t *testing.T) {
	if _, err := broadcaster.New(broadcaster.Config{Token: "short"}, memengine.New(memengine.Config{})); err == nil {
		t.Fatal("short token accepted")
	}
}

func TestStageMapAndWindow(t *testing.T) {
	c, eng, url := start(t)
	ctx := context.Background()
	raw := []byte(`{"stages":{"round-3":{"default":{"rows":["a"]},"segments":{"s1":{"rows":["b"]}}}},"ttl_seconds":120}`)
	r, err := c.PutStageMap(ctx, "ev", raw)
	if err != nil || r.Version != 1 || r.Stages != 1 || r.Bytes != len(raw) {
		t.Fatalf("put: %+v %v", r, err)
	}
	got, err := c.GetStageMap(ctx, "ev")
	if err != nil || string(got.Map) != string(raw) || got.Version != 1 {
		t.Fatalf("get: %+v %v", got, err)
	}
	_, err = c.PutStageMap(ctx, "ev", []byte(`{"stages":{"Bad Key":{"default":1}}}`))
	apiErr(t, err, 400, "bad_request")
	_, err = c.PutStageMap(ctx, "ev", []byte(`{"stages":`))
	apiErr(t, err, 400, "bad_request")
	big := []byte(`{"stages":{"a":{"default":"` + strings.Repeat("x", 2<<20) + `"}}}`)
	_, err = c.PutStageMap(ctx, "ev", big)
	apiErr(t, err, 413, "too_large")
	if snap, _ := eng.Snapshot(ctx, "ev"); snap.Map.Version != 1 {
		t.Fatalf("a rejected map changed the stored one: v%d", snap.Map.Version)
	}
	_, err = c.GetStageMap(ctx, "other")
	apiErr(t, err, 404, "not_found")

	if err := c.SetLive(ctx, "ev", true); err != nil {
		t.Fatal(err)
	}
	if snap, _ := eng.Snapshot(ctx, "ev"); !snap.Live {
		t.Fatal("window not on")
	}
	req, _ := http.NewRequest(http.MethodPut, url+"/v1/events/ev/window", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("window without live: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}

// failOnce fails the first SetStage after applying it, as a connection that
// dies before the reply would; the retry must not make a second version.
type failOnce struct {
	*memengine.Engine
	failed bool
}

func (f *failOnce) SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	res, err := f.Engine.SetStage(ctx, req)
	if !f.failed {
		f.failed = true
		return engine.SetResult{}, errors.New("EOF")
	}
	return res, err
}

func TestTransientEngineErrorRetriedOnce(t *testing.T) {
	eng := &failOnce{Engine: memengine.New(memengine.Config{})}
	s, err := broadcaster.New(broadcaster.Config{Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := &producer.Client{BaseURL: ts.URL, Token: token}
	r, err := c.SetStage(context.Background(), "ev", "round-1", nil, "") // no key: the server makes one
	if err != nil || r.V == 0 {
		t.Fatalf("after a transient failure: %+v %v", r, err)
	}
	if rec, _ := eng.Recent(context.Background(), "ev", 10); len(rec) != 1 {
		t.Fatalf("the retry made %d versions, want 1", len(rec))
	}
}

func TestPrivateReads(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	s, err := broadcaster.New(broadcaster.Config{Token: token, PublicReads: false, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := &producer.Client{BaseURL: ts.URL, Token: token}
	if _, err := c.SetStage(context.Background(), "ev", "a", nil, ""); err != nil {
		t.Fatal(err)
	}
	anon := &producer.Client{BaseURL: ts.URL}
	_, err = anon.Get(context.Background(), "ev")
	apiErr(t, err, 401, "unauthorized")
	_, err = anon.GetStageMap(context.Background(), "ev")
	apiErr(t, err, 401, "unauthorized")
	if r, err := c.Get(context.Background(), "ev"); err != nil || r.Stage != "a" {
		t.Fatalf("with the token: %+v %v", r, err)
	}
}

// Rotation: a new producer set takes effect at once; the dropped token is refused.
func TestProducerRotation(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	s, err := broadcaster.New(broadcaster.Config{Producers: []broadcaster.Producer{{Name: "old", Token: "0ld-7c6b5a4f3e2d1c0b9a8f7e6d"}}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	set := func(tok string) error {
		c := &producer.Client{BaseURL: ts.URL, Token: tok}
		_, err := c.SetStage(context.Background(), "ev", "k", nil, "")
		return err
	}
	if err := set("0ld-7c6b5a4f3e2d1c0b9a8f7e6d"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetProducers([]broadcaster.Producer{{Name: "new", Token: "n3w-1a2b3c4d5e6f7a8b9c0d1e2f"}}); err != nil {
		t.Fatal(err)
	}
	if err := set("0ld-7c6b5a4f3e2d1c0b9a8f7e6d"); err == nil {
		t.Fatal("the rotated-out token still works")
	}
	if err := set("n3w-1a2b3c4d5e6f7a8b9c0d1e2f"); err != nil {
		t.Fatalf("the new token: %v", err)
	}
	if err := s.SetProducers([]broadcaster.Producer{{Name: "weak", Token: "password12345678"}}); err == nil {
		t.Fatal("a weak token set was accepted")
	}
	if err := set("n3w-1a2b3c4d5e6f7a8b9c0d1e2f"); err != nil {
		t.Fatalf("a refused reload replaced the good set: %v", err)
	}
}

// flaky applies stage changes but fails them (as a reply lost in a failover
// would) while down is set; reads of event "slow" block until their context ends.
type flaky struct {
	*memengine.Engine
	down atomic.Bool
}

func (f *flaky) SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	res, err := f.Engine.SetStage(ctx, req)
	if f.down.Load() && req.Event == "failing" {
		return engine.SetResult{}, errors.New("connection reset by peer")
	}
	return res, err
}

func (f *flaky) Delivery(ctx context.Context, event string, v uint64) ([]engine.ProxyDelivery, error) {
	if event == "slow" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return f.Engine.Delivery(ctx, event, v)
}

// A change the engine may or may not have made: 503 outcome_unknown after the
// budget, with the key to retry with (made up by the server for a keyless
// request); the retry with it replays the change, never a second version.
func TestOutcomeUnknownAndRetry(t *testing.T) {
	eng := &flaky{Engine: memengine.New(memengine.Config{})}
	eng.down.Store(true)
	s, err := broadcaster.New(broadcaster.Config{Token: token, StageBudget: 300 * time.Millisecond, EngineTimeout: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/events/failing/stage", strings.NewReader(`{"stage":"round-1"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	key := resp.Header.Get("Idempotency-Key")
	if resp.StatusCode != 503 || !strings.Contains(string(body), "outcome_unknown") || !strings.HasPrefix(key, "auto-") || !strings.Contains(string(body), key) {
		t.Fatalf("%d %s (key %q), want 503 outcome_unknown naming the key", resp.StatusCode, body, key)
	}
	if took > 2*time.Second {
		t.Fatalf("the producer waited %v, the budget is 300ms", took)
	}
	eng.down.Store(false)
	c := &producer.Client{BaseURL: ts.URL, Token: token}
	r, err := c.SetStage(context.Background(), "failing", "round-1", nil, key)
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := eng.Recent(context.Background(), "failing", 10); len(rec) != 1 || rec[0].V != r.V {
		t.Fatalf("after the retry the log is %+v, want the one change (v%d)", rec, r.V)
	}
}

// Bulkheads: reports that hang, and an event whose engine calls keep failing,
// do not slow stage changes of other events.
func TestBulkheads(t *testing.T) {
	eng := &flaky{Engine: memengine.New(memengine.Config{})}
	eng.down.Store(true)
	s, err := broadcaster.New(broadcaster.Config{Token: token, StageBudget: 50 * time.Millisecond, EngineTimeout: 50 * time.Millisecond,
		BreakerFailures: 2, BreakerOpenFor: time.Minute, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := &producer.Client{BaseURL: ts.URL, Token: token}
	ctx := context.Background()
	if _, err := c.SetStage(ctx, "slow", "a", nil, ""); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_, _ = c.Report(ctx, "slow", 0)                            // hangs until the engine timeout: trips the reads breaker
		_, _ = c.SetStage(ctx, "failing", "x", nil, fmt.Sprint(i)) // trips the breaker of event "failing"
	}
	_, err = c.SetStage(ctx, "failing", "y", nil, "")
	apiErr(t, err, 503, "engine_unavailable") // its breaker is open: fails fast
	start := time.Now()
	r, err := c.SetStage(ctx, "other", "round-1", nil, "")
	if err != nil || r.V == 0 {
		t.Fatalf("another event's change with the reads breaker and one event's breaker open: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("another event's change took %v", took)
	}
	if !strings.Contains(scrape(t, ts.URL), "stagecast_broadcaster_open_event_breakers 1") {
		t.Fatal("open_event_breakers is not 1")
	}
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// failing is the memory engine whose stage changes and reads fail while fail is set.
type failing struct {
	*memengine.Engine
	fail atomic.Bool
}

func (f *failing) SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	if f.fail.Load() {
		return engine.SetResult{}, errors.New("redis: connection refused")
	}
	return f.Engine.SetStage(ctx, req)
}

func (f *failing) Recent(ctx context.Context, event string, n int) ([]wire.Stage, error) {
	if f.fail.Load() {
		return nil, errors.New("redis: connection refused")
	}
	return f.Engine.Recent(ctx, event, n)
}

// gauge reads one gauge (summed over its series) from s's registry.
func gauge(t *testing.T, s *broadcaster.Server, name string) float64 {
	t.Helper()
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum = max(sum, m.GetGauge().GetValue())
			}
		}
	}
	return sum
}

// TestBreakerGaugesClearAfterRecovery (hardening #7): the breaker metrics are
// read at the scrape, so once the engine is back and the open period is over
// they stop saying "open" though no request has touched the breakers since.
func TestBreakerGaugesClearAfterRecovery(t *testing.T) {
	eng := &failing{Engine: memengine.New(memengine.Config{})}
	eng.fail.Store(true)
	s, url := serve(t, broadcaster.Config{Token: token, BreakerFailures: 2, BreakerOpenFor: 200 * time.Millisecond,
		StageBudget: 100 * time.Millisecond}, eng)
	c := &producer.Client{BaseURL: url, Token: token}
	ctx := context.Background()
	for range 3 {
		_, _ = c.SetStage(ctx, "ev", "k", nil, "")
		_, _ = c.Get(ctx, "ev")
	}
	if o := gauge(t, s, "stagecast_broadcaster_open_event_breakers"); o != 1 {
		t.Fatalf("open event breakers %v, want 1", o)
	}
	if st := gauge(t, s, "stagecast_broadcaster_engine_breaker_state"); st != 2 {
		t.Fatalf("breaker state %v, want 2 (open)", st)
	}
	eng.fail.Store(false)
	waitfor.True(t, 5*time.Second, "the gauges clear with no request", func() bool {
		return gauge(t, s, "stagecast_broadcaster_open_event_breakers") == 0 && gauge(t, s, "stagecast_broadcaster_engine_breaker_state") < 2
	})
}

// TestProducerRateLimit (hardening #11): past its burst a producer gets 429
// rate_limited with Retry-After; another producer is unaffected.
func TestProducerRateLimit(t *testing.T) {
	const other = "other-producer-7c6b5a4f3e2d"
	_, url := serve(t, broadcaster.Config{Producers: []broadcaster.Producer{{Name: "p1", Token: token}, {Name: "p2", Token: other}},
		ProducerRate: 1, ProducerBurst: 5}, memengine.New(memengine.Config{}))
	ctx := context.Background()
	c := &producer.Client{BaseURL: url, Token: token}
	for i := range 5 {
		if _, err := c.SetStage(ctx, "ev", fmt.Sprintf("k%d", i), nil, ""); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, err := c.SetStage(ctx, "ev", "k9", nil, "")
	apiErr(t, err, 429, "rate_limited")
	if _, err := (&producer.Client{BaseURL: url, Token: other}).SetStage(ctx, "ev", "k", nil, ""); err != nil {
		t.Fatalf("another producer: %v", err)
	}
}
