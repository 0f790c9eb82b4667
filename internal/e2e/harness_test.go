package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

const token = "e2e-producer-token-0123456789"

type fleet struct {
	t       *testing.T
	redis   *redistest.Server
	bc      *producer.Client
	proxies []*proxy.Server
	https   []*http.Server // proxies[i] is served by https[i]
	urls    []string
}

// kill stops proxy i as a dying process would: its port stops answering
// (devices dialing it are refused by the kernel, not told 503 and a
// Retry-After by a proxy that is only shutting down) and its devices lose
// their connections.
func (f *fleet) kill(i int) {
	f.https[i].Close()
	f.proxies[i].Close()
}

func serveHTTP(t *testing.T, h http.Handler) string {
	addr, _ := serveHTTPServer(t, h)
	return addr
}

// serveHTTPServer is serveHTTP with the server, for a test that kills it.
func serveHTTPServer(t *testing.T, h http.Handler) (string, *http.Server) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return l.Addr().String(), hs
}

// newEngine is one process's engine client on Redis (one node, or any nodes of
// a cluster).
func newEngine(t *testing.T, addrs ...string) *redisengine.Engine {
	e, err := redisengine.New(redisengine.Config{Addrs: addrs, ResubscribeMax: 500 * time.Millisecond, OpTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// startFleet starts Redis, then a fleet on it.
func startFleet(t *testing.T, n int, ropts redistest.Options, pcfg proxy.Config) *fleet {
	r := redistest.Start(t, ropts)
	f := startFleetOn(t, n, []string{r.Addr()}, pcfg)
	f.redis = r
	return f
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// startFleetOn starts one broadcaster and n proxies on Redis at addrs, each
// with its own engine client, as separate processes would have.
func startFleetOn(t *testing.T, n int, addrs []string, pcfg proxy.Config) *fleet {
	f := &fleet{t: t}
	bs, err := broadcaster.New(broadcaster.Config{Token: token, BreakerFailures: 2, BreakerOpenFor: 300 * time.Millisecond,
		EngineTimeout: time.Second}, newEngine(t, addrs...))
	if err != nil {
		t.Fatal(err)
	}
	f.bc = &producer.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}
	for i := 0; i < n; i++ {
		cfg := pcfg
		cfg.ID = fmt.Sprintf("proxy-%d", i)
		if cfg.ReportInterval == 0 {
			cfg.ReportInterval = 100 * time.Millisecond
		}
		if cfg.ReconcileInterval == 0 {
			cfg.ReconcileInterval = time.Hour // tests prove the resubscribe path, not the safety net
		}
		if cfg.IPLimitExempt == nil {
			cfg.IPLimitExempt = loopback // thousands of test devices share 127.0.0.1
		}
		p, err := proxy.New(cfg, newEngine(t, addrs...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		addr, hs := serveHTTPServer(t, p.Handler())
		f.proxies = append(f.proxies, p)
		f.https = append(f.https, hs)
		f.urls = append(f.urls, "ws://"+addr+"/v1/ws")
	}
	return f
}

// dev is one test device and every stage version it received, in order.
type dev struct {
	c  *device.Client
	mu sync.Mutex
	vs []uint64 // every stage frame's version, duplicates included
}

func (d *dev) versions() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]uint64(nil), d.vs...)
}

// startDevices connects n devices subscribed to event. Device i starts on
// proxy i%len(urls) unless pin >= 0 (then all start on proxy pin). The event
// must exist (devices may subscribe only then): when it has no stage yet, a
// stage map is stored for it first, as a producer does ahead of the moment.
func (f *fleet) startDevices(ctx context.Context, n int, event string, pin int) []*dev {
	if _, err := f.bc.Get(ctx, event); err != nil {
		if _, err := f.bc.PutStageMap(ctx, event, []byte(`{"stages":{"pre-show":{"default":{}}}}`)); err != nil {
			f.t.Fatalf("create event %s: %v", event, err)
		}
	}
	devs := make([]*dev, n)
	var wg sync.WaitGroup
	f.t.Cleanup(wg.Wait)
	for i := range devs {
		start := i % len(f.urls)
		if pin >= 0 {
			start = pin
		}
		urls := append(append([]string(nil), f.urls[start:]...), f.urls[:start]...)
		d := &dev{}
		c, err := device.New(device.Config{URLs: urls, Device: fmt.Sprintf("d%d", i), Platform: "tv",
			Events: map[string]uint64{event: 0}, Ack: true, BackoffBase: 50 * time.Millisecond, BackoffCap: time.Second,
			OnFrame: func(fr wire.ProxyFrame) {
				if fr.Op == wire.OpStage {
					d.mu.Lock()
					d.vs = append(d.vs, fr.V)
					d.mu.Unlock()
				}
			}})
		if err != nil {
			f.t.Fatal(err)
		}
		d.c = c
		devs[i] = d
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	return devs
}

func (f *fleet) connections() int {
	n := 0
	for _, p := range f.proxies {
		n += p.Connections()
	}
	return n
}

var eventually = waitfor.True

// allOn reports whether every device holds version v of event.
func allOn(devs []*dev, event string, v uint64) bool {
	for _, d := range devs {
		if _, got := d.c.State(event); got != v {
			return false
		}
	}
	return true
}

func (f *fleet) set(ctx context.Context, event, stage string) broadcaster.StageReply {
	f.t.Helper()
	r, err := f.bc.SetStage(ctx, event, stage, nil, "")
	if err != nil {
		f.t.Fatalf("set %s %s: %v", event, stage, err)
	}
	return r
}

// setRetrying retries a stage change with one Idempotency-Key until it lands, as
// a producer's tool would while the engine recovers.
func (f *fleet) setRetrying(ctx context.Context, event, stage, key string, within time.Duration) broadcaster.StageReply {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := f.bc.SetStage(ctx, event, stage, nil, key)
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("set %s %s never landed: %v", event, stage, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricValue sums a metric family of a proxy's registry (0 when absent).
func metricValue(t *testing.T, p *proxy.Server, name string) float64 {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
