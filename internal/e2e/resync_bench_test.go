package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// BenchmarkResyncAfterFailover (hardening #3): 5,000 device connections (the
// process file limit is 20,000: each is two fds here) on one proxy over a real
// redis-server, each tracking its inbox (one note received). Then the proxy's
// pub/sub connections are killed, as a failover kills them: it re-registers
// and re-reads every tracked inbox. Reported: time until every resync is done,
// peak goroutines above the idle count, XRANGE calls, and frames the devices
// got (none: nothing new was stored).
//
//	go test -run XXX -bench ResyncAfterFailover -benchtime 1x ./internal/e2e
func BenchmarkResyncAfterFailover(b *testing.B) {
	const n = 5000
	srv := redistest.Start(b, redistest.Options{})
	eng, err := redisengine.New(redisengine.Config{Addrs: []string{srv.Addr()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(eng.Close)
	reg := prometheus.NewRegistry()
	p, err := proxy.New(proxy.Config{TrustDeviceIDs: true, AdmitRate: 1e6, AdmitBurst: 1e6, Registerer: reg,
		IPLimitExempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, PingInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(p.Handler())
	b.Cleanup(func() { p.Close(); hs.Close() })
	gauge := func(name string) float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
		return 0
	}
	waitFor := func(what string, ok func() bool) {
		for deadline := time.Now().Add(2 * time.Minute); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("note subscriptions", func() bool {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code == 200
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var frames atomic.Int64
	var wg sync.WaitGroup
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ws"
	for i := range n {
		ws, _, err := websocket.Dial(ctx, fmt.Sprintf("%s?device=rs-%d", url, i), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ws.CloseNow() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					return
				}
				frames.Add(1)
			}
		}()
	}
	waitFor("registrations", func() bool { return gauge("stagecast_proxy_inbox_registrations_total") == n })
	for from := 0; from < n; from += wire.MaxNoteTargets {
		var devs []string
		for i := from; i < min(from+wire.MaxNoteTargets, n); i++ {
			devs = append(devs, fmt.Sprintf("rs-%d", i))
		}
		if _, err := eng.Notify(ctx, engine.NoteWrite{ID: fmt.Sprintf("nrs%d", from), TS: 1, Note: wire.Notification{
			Devices: devs, Type: "t", Priority: wire.PriorityNormal, Payload: []byte(`{}`), TTL: time.Hour}}); err != nil {
			b.Fatal(err)
		}
	}
	waitFor("one note per device", func() bool { return frames.Load() == n })
	xrange := regexp.MustCompile(`cmdstat_xrange:calls=(\d+)`)
	calls := func() int {
		out, _ := srv.Cli(ctx, "INFO", "commandstats")
		m := xrange.FindStringSubmatch(out)
		if m == nil {
			return 0
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	for range b.N {
		idle, x0, f0, r0 := runtime.NumGoroutine(), calls(), frames.Load(), gauge("stagecast_proxy_inbox_resyncs_total")
		var peak atomic.Int64
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				if g := int64(runtime.NumGoroutine()); g > peak.Load() {
					peak.Store(g)
				}
			}
		}()
		start := time.Now()
		if out, err := srv.Cli(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
			b.Fatalf("client kill: %v %s", err, out)
		}
		waitFor("every inbox re-read", func() bool {
			return gauge("stagecast_proxy_inbox_resyncs_total")-r0 >= n && gauge("stagecast_proxy_resyncs_queued") == 0 &&
				gauge("stagecast_proxy_backlog_reads_in_flight") == 0
		})
		took := time.Since(start)
		close(stop)
		b.ReportMetric(float64(took.Milliseconds()), "converge-ms")
		b.ReportMetric(float64(peak.Load()-int64(idle)), "peak-extra-goroutines")
		b.ReportMetric(float64(calls()-x0), "xrange-calls")
		b.ReportMetric(float64(frames.Load()-f0), "frames-sent")
		b.ReportMetric(gauge("stagecast_proxy_inbox_resyncs_total")-r0, "resyncs")
	}
}
