package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// refusalPage opens a WebSocket to the proxy and records what a page can see:
// the frames and the close event.
const refusalPage = `<!doctype html><meta charset="utf-8"><title>refusal</title><script>
window.seen = {frames: [], code: 0, reason: "", done: false};
const ws = new WebSocket(%q);
ws.onmessage = (e) => window.seen.frames.push(e.data);
ws.onclose = (e) => { window.seen.code = e.code; window.seen.reason = e.reason; window.seen.done = true; };
</script>`

// TestRefusalVisibleInBrowser (hardening #12): a browser cannot read the
// status of a refused upgrade, so a draining proxy accepts a browser's upgrade,
// sends the reconnect hint and closes 1013 with the delay in the reason:
// the page sees all three, in real Chromium.
func TestRefusalVisibleInBrowser(t *testing.T) {
	p, addr := servePageProxy(t, proxy.Config{DrainWindow: 50 * time.Millisecond})
	if err := p.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := pageSees(t, "ws://"+addr+"/v1/ws?device=browser-1")
	if wire.CloseCode(seen.Code) != wire.CloseTryAgainLater || !strings.HasPrefix(seen.Reason, "retry after ") || !strings.Contains(seen.Reason, "draining") {
		t.Fatalf("the page saw close %d %q, want 1013 with the delay", seen.Code, seen.Reason)
	}
	if len(seen.Frames) != 1 {
		t.Fatalf("frames %v, want the reconnect hint", seen.Frames)
	}
	f, err := wire.ParseProxyFrame([]byte(seen.Frames[0]))
	if err != nil || f.Op != wire.OpReconnect || f.AfterMS <= 0 || !strings.Contains(seen.Reason, fmt.Sprintf("%d ms", f.AfterMS)) {
		t.Fatalf("hint %+v (%v) and reason %q", f, err, seen.Reason)
	}
	if p.Connections() != 0 {
		t.Fatalf("a refused browser counts as %d connections", p.Connections())
	}
}

// TestTokenRefusalVisibleInBrowser: a refused device token is a 401 that a
// page cannot read either; the proxy accepts the browser's upgrade and closes
// 4500 with the reason, which tells the page (and the TypeScript SDK) not to
// retry with the same token. Real Chromium.
func TestTokenRefusalVisibleInBrowser(t *testing.T) {
	_, verifier, err := devicetoken.NewTestPair("browser")
	if err != nil {
		t.Fatal(err)
	}
	p, addr := servePageProxy(t, proxy.Config{Tokens: verifier, RequireToken: true})
	seen := pageSees(t, "ws://"+addr+"/v1/ws?token=not-a-token")
	if wire.CloseCode(seen.Code) != wire.CloseUnauthorized || !strings.HasPrefix(seen.Reason, "unauthorized: ") || len(seen.Frames) != 0 {
		t.Fatalf("the page saw %+v, want close 4500 with the reason and no frame", seen)
	}
	if wire.CloseCode(seen.Code).Reconnect() {
		t.Fatal("4500 must mean: do not reconnect with the same token")
	}
	if p.Connections() != 0 {
		t.Fatalf("a refused browser counts as %d connections", p.Connections())
	}
}

// servePageProxy serves a proxy (in-memory engine) that pages of 127.0.0.1
// may connect to, on a real listener (Chromium connects to it), until the
// test ends.
func servePageProxy(t *testing.T, cfg proxy.Config) (*proxy.Server, string) {
	t.Helper()
	cfg.OriginPatterns = []string{"127.0.0.1:*"}
	p, err := proxy.New(cfg, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p.Handler()}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return p, l.Addr().String()
}

// pageSeen is what a page's WebSocket saw: its frames and its close event.
type pageSeen struct {
	Frames []string
	Code   int
	Reason string
	Done   bool
}

// pageSees opens a page in Chromium that connects to wsURL, and returns what
// it saw once the socket closed.
func pageSees(t *testing.T, wsURL string) pageSeen {
	t.Helper()
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, refusalPage, wsURL)
	}))
	t.Cleanup(page.Close)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(page.URL)); err != nil {
		t.Fatal(err)
	}
	var seen pageSeen
	deadline := time.Now().Add(15 * time.Second)
	for !seen.Done {
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(window.seen)`))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(raw), &seen); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page saw no close: %+v", seen)
		}
		if !seen.Done {
			time.Sleep(50 * time.Millisecond) // polling the page
		}
	}
	return seen
}
