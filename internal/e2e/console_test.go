package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// browser starts headless Debian chromium (make test installs it) for chromedp.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("the console tests need Debian's chromium: apt-get install chromium (make test installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // root in CI containers
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 1500),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(cancelB)
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelT)
	return ctx
}

// textContains waits until the element's text contains want.
func textContains(sel, want string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, err := chromedp.Text(chromedp.CSS(sel))(ctx, t)
			if err != nil {
				return err
			}
			if strings.Contains(got, want) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: text %q never contained %q", sel, got, want)
			}
			if _, err := chromedp.Sleep(50*time.Millisecond)(ctx, t); err != nil { // polling the page
				return err
			}
		}
	})
}

const consoleMap = `{"stages":{"pre-show":{"default":{"rows":["intro"]}},"round-3":{"default":{"rows":["r3"]}},"knockout":{"default":{"rows":["ko"]}}},"ttl_seconds":300}`

// The producer console in a real browser: a wrong token is refused; a map is
// checked (a syntax error points at its line), diffed and stored; a stage
// button reaches a real device; the convergence chart reaches 100 %; a double
// click makes one version; the keyboard shortcut works; a notification is sent.
func TestConsoleInBrowser(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	base := "http://" + serveHTTP(t, bs.Handler())
	p, err := proxy.New(proxy.Config{ID: "console-proxy", ReportInterval: 100 * time.Millisecond, TrustDeviceIDs: true,
		IPLimitExempt: loopback, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	wsURL := "ws://" + serveHTTP(t, p.Handler()) + "/v1/ws"

	ctx := browser(t)
	var shot []byte
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console"),
		chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token-0123456789"),
		chromedp.Click(chromedp.CSS("#signin-form button")),
		textContains("#signin-error", "token was refused"),
		chromedp.SetValue(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin-form button")),
		textContains("#who", "Signed in as default"),
		chromedp.SendKeys(chromedp.CSS("#open-event"), "fight"),
		chromedp.Click(chromedp.CSS("#open-form button")),
		textContains("#map-info", "No stage map stored yet"),
		// A syntax error points at its line; nothing is stored.
		chromedp.SetValue(chromedp.CSS("#map-text"), "{\n  \"stages\": {\n    \"a\": }\n}"),
		chromedp.Click(chromedp.CSS("#map-diff")),
		textContains("#map-error", "Line 3"),
		chromedp.SetValue(chromedp.CSS("#map-text"), consoleMap),
		chromedp.Click(chromedp.CSS("#map-diff")),
		textContains("#map-diff-out", `+   "stages": {`),
		chromedp.Click(chromedp.CSS("#map-save")),
		textContains("#map-info", "Stored map version 1"),
		textContains("#stage-buttons", "knockout"),
	); err != nil {
		t.Fatal(err)
	}

	// A real device on the event.
	dctx, stopDev := context.WithCancel(context.Background())
	defer stopDev()
	var got sync.Map
	d, err := device.New(device.Config{URLs: []string{wsURL}, Device: "tv-1", Events: map[string]uint64{"fight": 0}, Ack: true, Notes: true,
		BackoffBase: 50 * time.Millisecond,
		OnStage:     func(f wire.ProxyFrame, _ time.Time) { got.Store(f.Key, f.V) },
		OnNote:      func(f wire.ProxyFrame, _ time.Time) { got.Store("note:"+f.Type, f.NID) }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.Run(dctx) }()
	eventually(t, 10*time.Second, "device connected", func() bool { return p.Connections() == 1 })
	eventually(t, 10*time.Second, "device subscribed", func() bool { return metricValue(t, p, "stagecast_proxy_subscriptions") == 1 })

	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#stage-buttons button[data-stage="round-3"]`)),
		textContains("#change-result", "round-3 is live: v"),
		chromedp.WaitVisible(chromedp.CSS(`#chart[data-sent="100"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#chart[data-acked="100"]`)),
		textContains("#proxy-rows", "console-proxy"),
		textContains("#audit-rows", "set_stage"),
	); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the device got round-3", func() bool { _, ok := got.Load("round-3"); return ok })
	if k, _ := d.State("fight"); k != "round-3" {
		t.Fatalf("device on %q", k)
	}

	// A double click, then a slower press of the same button: one version (the
	// later requests replay it under the same Idempotency-Key).
	before := changes(t, bs)
	if err := chromedp.Do(ctx,
		chromedp.DoubleClick(chromedp.CSS(`#stage-buttons button[data-stage="knockout"]`)),
		chromedp.Click(chromedp.CSS(`#stage-buttons button[data-stage="knockout"]`)), // a slower second press
		textContains("#change-result", "knockout is live"),
		textContains("#current", "knockout"),
		chromedp.WaitVisible(chromedp.CSS(`#chart[data-sent="100"][data-acked="100"]`)),
		textContains("#event-rows", "knockout"), // the list refreshes every 3 s
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) (err error) {
			shot, err = chromedp.FullScreenshot(100)(ctx, t) // both changes on the chart
			return err
		}),
	); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the device got knockout", func() bool { _, ok := got.Load("knockout"); return ok })
	recent, _ := eng.Recent(context.Background(), "fight", 10)
	n := 0
	for _, s := range recent {
		if s.Key == "knockout" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("a double click made %d knockout versions, want 1 (log %+v)", n, recent)
	}
	eventually(t, 5*time.Second, "both requests of the double click answered", func() bool {
		after := changes(t, bs)
		return after["created"]-before["created"] == 1 && after["replayed"]-before["replayed"] >= 1
	})

	// Key 1 presses the first stage button; a notification goes to the device.
	if err := chromedp.Do(ctx,
		chromedp.Focus(chromedp.CSS(`#stage-buttons button[data-stage="knockout"]`)), // not a text field
		chromedp.KeyEvent("1"),
		textContains("#change-result", "pre-show is live"),
		chromedp.SendKeys(chromedp.CSS("#note-devices"), "tv-1"),
		chromedp.SendKeys(chromedp.CSS("#note-type"), "profile-updated"),
		chromedp.SetValue(chromedp.CSS("#note-payload"), `{"name":"Ana"}`),
		chromedp.Click(chromedp.CSS("#note-form button")),
		textContains("#note-result", "stored in 1 inboxes"),
		textContains("#note-report", `"sent": 1`),
	); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the device got the note", func() bool { _, ok := got.Load("note:profile-updated"); return ok })

	if os.Getenv("STAGECAST_UPDATE_SCREENSHOT") != "" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "console.png"), shot, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if len(shot) < 10000 {
		t.Fatalf("screenshot of %d bytes", len(shot))
	}
}

// changes reads the broadcaster's stage_changes_total by result.
func changes(t *testing.T, bs *broadcaster.Server) map[string]float64 {
	mfs, err := bs.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "stagecast_broadcaster_stage_changes_total" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}
