package proxy_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// cutEngine is an engine behind a link that can be cut: while cut, every
// write and read fails and published stages are lost, as through a silent
// partition (the subscription itself never reports anything).
type cutEngine struct {
	proxy.Engine
	cut atomic.Bool
}

var errCut = errors.New("i/o timeout (cut)")

func (e *cutEngine) PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error {
	if e.cut.Load() {
		return errCut
	}
	return e.Engine.PutProxyLoad(ctx, l)
}

func (e *cutEngine) Recent(ctx context.Context, event string, n int) ([]wire.Stage, error) {
	if e.cut.Load() {
		return nil, errCut
	}
	return e.Engine.Recent(ctx, event, n)
}

func (e *cutEngine) Subscribe(ctx context.Context, event string, onStage func(wire.Stage), onSubscribed func()) error {
	return e.Engine.Subscribe(ctx, event, func(s wire.Stage) {
		if !e.cut.Load() {
			onStage(s)
		}
	}, onSubscribed)
}

func readyz(t *testing.T, p *proxy.Server) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

// TestEngineLost (issue 24): a proxy whose writes to the engine all fail
// for EngineLostAfter says so (readiness, a gauge) and keeps its devices;
// once a write succeeds again it re-reads every event at once, so a change
// published while it was cut reaches its devices without waiting for the
// reconcile timer or a resubscription.
func TestEngineLost(t *testing.T) {
	mem := memEngine(t)
	eng := &cutEngine{Engine: mem}
	p, url := startProxy(t, eng, proxy.Config{ReportInterval: 50 * time.Millisecond, EngineLostAfter: 300 * time.Millisecond,
		ReconcileInterval: time.Hour})
	d := dial(t, url)
	d.send(`{"op":"sub","events":{"fight":0}}`)
	subscribed(t, p, 1)
	eventually(t, 5*time.Second, "ready", func() bool { c, _ := readyz(t, p); return c == http.StatusOK })

	eng.cut.Store(true)
	cut := time.Now()
	eventually(t, 5*time.Second, "not ready once cut", func() bool { c, _ := readyz(t, p); return c == http.StatusServiceUnavailable })
	if took := time.Since(cut); took < 300*time.Millisecond {
		t.Fatalf("not ready after %v, before EngineLostAfter (300ms)", took)
	}
	if _, body := readyz(t, p); !strings.Contains(body, "unreachable") {
		t.Fatalf("readyz says %q", body)
	}
	if v := testutil.ToFloat64(metric(t, p, "stagecast_proxy_engine_reachable")); v != 0 {
		t.Fatalf("engine_reachable %v while cut", v)
	}
	s := set(t, mem, "fight", "round-2", nil) // published while cut: lost on the way
	time.Sleep(200 * time.Millisecond)
	if testutil.ToFloat64(metric(t, p, "stagecast_proxy_connections")) != 1 {
		t.Fatal("the proxy dropped its device while cut")
	}

	eng.cut.Store(false)
	f := d.expect(wire.OpStage) // within the 5 s read timeout: the re-read after the heal
	if f.Key != "round-2" || f.V != s.V {
		t.Fatalf("after the heal %+v, want round-2 v%d", f, s.V)
	}
	eventually(t, 5*time.Second, "ready again", func() bool { c, _ := readyz(t, p); return c == http.StatusOK })
	if v := testutil.ToFloat64(metric(t, p, "stagecast_proxy_engine_lost_total")); v != 1 {
		t.Fatalf("engine_lost_total %v, want 1", v)
	}
}
