package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// startProxy runs a proxy on 127.0.0.1:0 and returns it with its ws URL.
func startProxy(t *testing.T, eng proxy.Engine, cfg proxy.Config) (*proxy.Server, string) {
	t.Helper()
	return startProxyOn(t, eng, cfg, func(l net.Listener) net.Listener { return l })
}

// startProxyOn is startProxy with the listener wrapped (e.g. to shrink socket buffers).
func startProxyOn(t *testing.T, eng proxy.Engine, cfg proxy.Config, wrap func(net.Listener) net.Listener) (*proxy.Server, string) {
	t.Helper()
	if cfg.ReportInterval == 0 {
		cfg.ReportInterval = 50 * time.Millisecond
	}
	p, err := proxy.New(cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p.Handler()}
	go hs.Serve(wrap(l))
	t.Cleanup(func() { p.Close(); hs.Close() })
	return p, "ws://" + l.Addr().String() + "/v1/ws"
}

var eventually = waitfor.True

// subscribed waits until the proxy holds n subscriptions.
func subscribed(t *testing.T, p *proxy.Server, n float64) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%v subscriptions", n), func() bool {
		return testutil.ToFloat64(metric(t, p, "stagecast_proxy_subscriptions")) == n
	})
}

// testEvents are the events memEngine creates: devices may only subscribe to
// events that exist.
var testEvents = []string{"fight", "ev", "a", "b", "c"}

// memEngine returns an in-memory engine in which testEvents exist (each has a
// stage map, no stage yet).
func memEngine(t *testing.T) *memengine.Engine {
	t.Helper()
	eng := memengine.New(memengine.Config{})
	for _, ev := range testEvents {
		if _, err := eng.PutStageMap(context.Background(), ev, []byte(`{"stages":{"x":{"default":{}}}}`), 1); err != nil {
			t.Fatal(err)
		}
	}
	return eng
}

// testKeys returns a device-token signer and the verifier of its key.
func testKeys(t *testing.T) (*devicetoken.Signer, *devicetoken.Verifier) {
	t.Helper()
	s, v, err := devicetoken.NewTestPair("test")
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

type rawDevice struct {
	t  *testing.T
	ws *websocket.Conn
}

func dial(t *testing.T, url string) *rawDevice {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return &rawDevice{t: t, ws: ws}
}

func (d *rawDevice) send(s string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		d.t.Fatalf("send: %v", err)
	}
}

func (d *rawDevice) next() (wire.ProxyFrame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := d.ws.Read(ctx)
	if err != nil {
		return wire.ProxyFrame{}, err
	}
	return wire.ParseProxyFrame(b)
}

func (d *rawDevice) expect(op string) wire.ProxyFrame {
	d.t.Helper()
	f, err := d.next()
	if err != nil {
		d.t.Fatalf("waiting for %s: %v", op, err)
	}
	if f.Op != op {
		d.t.Fatalf("got %+v, want op %s", f, op)
	}
	return f
}

func set(t *testing.T, eng *memengine.Engine, event, key string, target *wire.Target) wire.Stage {
	t.Helper()
	r, err := eng.SetStage(context.Background(), engine.SetRequest{Event: event, Key: key, Target: target, TS: time.Now().UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	return r.Stage
}

func TestStageFanoutAndCatchUp(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{})
	s1 := set(t, eng, "fight", "pre-show", nil)

	d := dial(t, url)
	d.send(`{"op":"sub","events":{"fight":0}}`)
	f := d.expect(wire.OpStage) // catch-up: current is newer than 0
	if f.Key != "pre-show" || f.V != s1.V {
		t.Fatalf("catch-up frame %+v", f)
	}
	s := set(t, eng, "fight", "round-1", nil)
	f = d.expect(wire.OpStage)
	if f.Key != "round-1" || f.V != s.V || f.TS != s.TS || f.Event != "fight" {
		t.Fatalf("broadcast frame %+v want %+v", f, s)
	}

	// A device that already holds the current version gets nothing on sub.
	d2 := dial(t, url)
	d2.send(fmt.Sprintf(`{"op":"sub","events":{"fight":%d}}`, s.V))
	s3 := set(t, eng, "fight", "round-2", nil)
	if f := d2.expect(wire.OpStage); f.V != s3.V {
		t.Fatalf("d2 got %+v, want only v%d", f, s3.V)
	}
	d.expect(wire.OpStage)

	// A device far behind gets only the latest (skips intermediate versions).
	d3 := dial(t, url)
	d3.send(fmt.Sprintf(`{"op":"sub","events":{"fight":%d}}`, s1.V))
	if f := d3.expect(wire.OpStage); f.V != s3.V || f.Key != "round-2" {
		t.Fatalf("d3 catch-up %+v", f)
	}

	// Unsub stops delivery; unknown unsub is an error frame.
	d.send(`{"op":"unsub","events":["fight"]}`)
	d.send(`{"op":"unsub","events":["fight"]}`)
	if f := d.expect(wire.OpError); f.Code != wire.CodeUnknownEvent {
		t.Fatalf("%+v", f)
	}
	set(t, eng, "fight", "round-3", nil)
	d2.expect(wire.OpStage)
	d.send(`{"op":"ack","event":"fight","v":4}`) // any version: d is not subscribed
	if f := d.expect(wire.OpError); f.Code != wire.CodeUnknownEvent {
		t.Fatalf("after unsub, got %+v (a stage leaked?)", f)
	}
}

func TestTargetedDelivery(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{})
	tv := dial(t, url+"?platform=tv&segment=s1")
	mobile := dial(t, url+"?platform=mobile")
	tv.send(`{"op":"sub","events":{"ev":0}}`)
	mobile.send(`{"op":"sub","events":{"ev":0}}`)
	subscribed(t, p, 2) // nothing to catch up: no frame to wait for
	set(t, eng, "ev", "tv-promo", &wire.Target{Platforms: []string{"tv"}})
	everyone := set(t, eng, "ev", "everyone", nil)
	if f := tv.expect(wire.OpStage); f.Key != "tv-promo" {
		// The tv device may get v1 then v2, or skip to v2; never miss v2.
		if f.Key != "everyone" {
			t.Fatalf("tv got %+v", f)
		}
	}
	if f := mobile.expect(wire.OpStage); f.Key != "everyone" || f.V != everyone.V {
		t.Fatalf("mobile got %+v: a targeted stage leaked to a non-matching device", f)
	}
	// Catch-up honours targets: a mobile device joining now must get its newest
	// matching stage, not the tv-only one.
	tvOnly := set(t, eng, "ev", "tv-only-2", &wire.Target{Platforms: []string{"tv"}, Segments: []string{"s1"}})
	late := dial(t, url+"?platform=mobile")
	late.send(`{"op":"sub","events":{"ev":0}}`)
	if f := late.expect(wire.OpStage); f.Key != "everyone" || f.V != everyone.V {
		t.Fatalf("late mobile catch-up got %+v", f)
	}
	for {
		f := tv.expect(wire.OpStage)
		if f.V == tvOnly.V {
			break
		}
	}
}

func TestBadFrames(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{ReadLimit: 256, MaxSubscriptions: 2})

	d := dial(t, url)
	for _, bad := range []string{`{"op":"dance"}`, `{"op":"sub","events":{"BAD":1}}`, `{"op":"ack","event":"x"}`} {
		d.send(bad)
		if f := d.expect(wire.OpError); f.Code != wire.CodeBadRequest || f.Msg == "" {
			t.Fatalf("%s -> %+v", bad, f)
		}
	}
	d.send(`{"op":"sub","events":{"a":0}}`)
	d.send(`{"op":"sub","events":{"b":0,"c":0}}`) // one of b, c exceeds the limit of 2
	if f := d.expect(wire.OpError); f.Code != wire.CodeTooManySubscriptions {
		t.Fatalf("too many subs -> %+v", f)
	}
	// The connection survived all of that.
	set(t, eng, "a", "k", nil)
	if f := d.expect(wire.OpStage); f.Event != "a" {
		t.Fatalf("%+v", f)
	}

	nj := dial(t, url)
	nj.send(`this is not json`)
	_, err := nj.next()
	if s := websocket.CloseStatus(err); s != websocket.StatusCode(wire.CloseInvalidFrame) {
		t.Fatalf("invalid JSON: close status %d (%v), want 1007", s, err)
	}
	big := dial(t, url)
	big.send(`{"op":"sub","events":{"` + strings.Repeat("a", 100) + `":0},"pad":"` + strings.Repeat("x", 400) + `"}`)
	_, err = big.next()
	if s := websocket.CloseStatus(err); s != websocket.StatusCode(wire.CloseTooBig) {
		t.Fatalf("oversize frame: close status %d (%v), want 1009", s, err)
	}
}

func TestFrameRateLimit(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{MaxFramesPerSecond: 3})
	d := dial(t, url)
	for i := 0; i < 4; i++ {
		d.send(`{"op":"sub","events":{"a":0}}`)
	}
	if f := d.expect(wire.OpError); f.Code != wire.CodeRateLimited {
		t.Fatalf("%+v", f)
	}
}

func TestAdmission(t *testing.T) {
	eng := memEngine(t)
	_, ver := testKeys(t)
	_, url := startProxy(t, eng, proxy.Config{AdmitRate: 0.001, AdmitBurst: 2, RetryAfter: 2 * time.Second, Tokens: ver})
	dial(t, url)
	dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third connection: err=%v resp=%v, want 503", err, resp)
	}
	ra := resp.Header.Get("Retry-After")
	if ra != "2" && ra != "3" && ra != "4" {
		t.Fatalf("Retry-After %q, want jittered in [2,4]", ra)
	}
	// Admission comes before the signature check, so forged tokens cost no more
	// than the admission rate allows: past it, 503 even with a bad token.
	_, resp, err = websocket.Dial(ctx, url+"?token=bad", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("bad token past the admission rate: err=%v resp=%v, want 503", err, resp)
	}
	_, url2 := startProxy(t, eng, proxy.Config{Tokens: ver})
	_, resp, err = websocket.Dial(ctx, url2+"?token=bad", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: err=%v resp=%v, want 401", err, resp)
	}
	_, resp, err = websocket.Dial(ctx, url+"?platform=Not_Valid", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad platform: %v %v", err, resp)
	}
}

func TestDrain(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{DrainWindow: 300 * time.Millisecond, ReconnectJitter: time.Second})
	const n = 20
	devs := make([]*rawDevice, n)
	for i := range devs {
		devs[i] = dial(t, url)
		devs[i].send(`{"op":"sub","events":{"ev":0}}`)
	}
	eventually(t, 5*time.Second, "connections", func() bool { return p.Connections() == n })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Drain(ctx) }()
	var afters []int64
	for _, d := range devs {
		f := d.expect(wire.OpReconnect)
		if f.AfterMS < 0 || f.AfterMS > 1000 {
			t.Fatalf("after_ms %d outside [0, 1000]", f.AfterMS)
		}
		afters = append(afters, f.AfterMS)
		_, err := d.next()
		if s := websocket.CloseStatus(err); s != websocket.StatusCode(wire.CloseServiceRestart) {
			t.Fatalf("close status %d (%v), want 1012", s, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("drain took %v for a 300ms window", time.Since(start))
	}
	distinct := map[int64]bool{}
	for _, a := range afters {
		distinct[a] = true
	}
	if len(distinct) < n/2 {
		t.Fatalf("after_ms not jittered: %v", afters)
	}
	// New devices are refused while draining.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	_, resp, err := websocket.Dial(ctx2, url, nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial while draining: %v", err)
	}
}

func TestDeliveryReportPublished(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{ID: "p-test"})
	devs := []*rawDevice{dial(t, url), dial(t, url), dial(t, url)}
	for _, d := range devs {
		d.send(`{"op":"sub","events":{"ev":0}}`)
	}
	subscribed(t, p, 3)
	s := set(t, eng, "ev", "k", nil)
	ack := fmt.Sprintf(`{"op":"ack","event":"ev","v":%d}`, s.V)
	for i, d := range devs {
		d.expect(wire.OpStage)
		if i < 2 {
			d.send(ack)
			d.send(ack) // duplicate: counted once
		}
	}
	eventually(t, 5*time.Second, "report with 3 sent and 2 acked", func() bool {
		pds, err := eng.Delivery(context.Background(), "ev", s.V)
		if err != nil || len(pds) != 1 {
			return false
		}
		pd := pds[0]
		return pd.Proxy == "p-test" && pd.Devices == 3 && pd.Version.Sent == 3 && pd.Version.Acked == 2 && len(pd.Version.Latency) > 0
	})
}

// TestConfigValidate: DefaultConfig is valid; Validate refuses what is wrong
// and changes nothing; New fills zero fields from DefaultConfig, keeps the
// rest, and a negative per-IP limit means off, not the default.
func TestConfigValidate(t *testing.T) {
	for _, bad := range []func(*proxy.Config){
		func(c *proxy.Config) { c.MaxConnections = -1 },
		func(c *proxy.Config) { c.ReadLimit = 10 },
		func(c *proxy.Config) { c.Writers, c.MaxWriters = 10, 5 },
		func(c *proxy.Config) { c.ID = "has space" },
		func(c *proxy.Config) { c.WriteTimeout = -time.Second },
		func(c *proxy.Config) { c.Now = nil },
	} {
		c := proxy.DefaultConfig()
		c.Rand = rand.New(rand.NewPCG(1, 2))
		bad(&c)
		before := fmt.Sprintf("%+v", c)
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", c)
		}
		if after := fmt.Sprintf("%+v", c); after != before {
			t.Errorf("Validate changed the config:\n%s\n%s", before, after)
		}
	}
	c := proxy.DefaultConfig()
	c.Rand = rand.New(rand.NewPCG(1, 2))
	if err := c.Validate(); err != nil || c.WriteTimeout != 5*time.Second || c.MaxSubscriptions != 16 {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	var zero proxy.Config
	if err := zero.Validate(); err == nil {
		t.Fatal("an unfilled Config passed Validate")
	}
	p, err := proxy.New(proxy.Config{MaxSubscriptions: 3, MaxConnsPerIP: -1, IPAdmitRate: -1}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := p.Config(); got.MaxSubscriptions != 3 || got.MaxConnections != 200000 || got.MaxConnsPerIP != -1 || got.IPAdmitRate != -1 || got.IPAdmitBurst != 100 {
		t.Fatalf("New's config %+v", got)
	}
}

// metric returns a collector from the proxy's registry by name, for testutil.
func metric(t *testing.T, p *proxy.Server, name string) prometheus.Collector {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: name}, func() float64 {
				m := mf.Metric[0]
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			})
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func TestCapacity(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{MaxConnections: 2})
	dial(t, url)
	dial(t, url)
	eventually(t, 5*time.Second, "two devices", func() bool { return p.Connections() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third device on a proxy of 2: %v %v, want 503 with Retry-After", err, resp)
	}
}

// TestTopicLinger: when an event's last device leaves, its engine subscription
// stays for TopicLinger, then goes.
func TestTopicLinger(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{TopicLinger: 300 * time.Millisecond, ReportInterval: 50 * time.Millisecond})
	d := dial(t, url)
	d.send(`{"op":"sub","events":{"ev":0}}`)
	events := func() float64 { return testutil.ToFloat64(metric(t, p, "stagecast_proxy_events")) }
	eventually(t, 5*time.Second, "the event subscribed", func() bool { return events() == 1 })
	d.send(`{"op":"unsub","events":["ev"]}`)
	left := time.Now()
	eventually(t, 5*time.Second, "the event's subscription removed", func() bool { return events() == 0 })
	if time.Since(left) < 250*time.Millisecond {
		t.Fatalf("removed after %v, before the 300ms linger", time.Since(left))
	}
}
