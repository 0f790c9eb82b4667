package proxy_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/proxy"
)

// openFiles is how many files this process holds (both ends of the test's
// connections are in it).
func openFiles(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd here: %v", err)
	}
	return len(es)
}

// TestLeaversReleaseTheirFiles: devices whose TCP connection ends without a
// close frame (a reset, a killed app, a network gone: every leaver of a
// connect storm) release their socket on the proxy at once. Found by a
// 19,500-device storm: the proxy kept every leaver's socket open, hit its
// file limit and stopped accepting (coder/websocket closes a conn whose read
// failed only from a finalizer).
func TestLeaversReleaseTheirFiles(t *testing.T) {
	p, url := startProxy(t, memengine.New(memengine.Config{}), proxy.Config{})
	before := openFiles(t)
	const n = 100
	var conns []*websocket.Conn
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ws, _, err := websocket.Dial(ctx, fmt.Sprintf("%s?device=leaver-%d", url, i), nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, ws)
	}
	eventually(t, 5*time.Second, "100 devices connected", func() bool { return p.Connections() == n })
	// Both ends of every connection are counted (so the check below means
	// something); the same slack of 5 as below, for files the runtime or an
	// ended test opens and closes meanwhile.
	if open := openFiles(t); open < before+2*n-5 {
		t.Fatalf("%d files open with %d connections (both ends), %d before", open, n, before)
	}
	for _, ws := range conns {
		_ = ws.CloseNow() // no close frame: the TCP connection just ends
	}
	eventually(t, 5*time.Second, "every leaver's socket closed on the proxy", func() bool {
		return p.Connections() == 0 && openFiles(t) <= before+5
	})
}
