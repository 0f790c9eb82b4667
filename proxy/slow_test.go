package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// smallSendBuf shrinks each accepted socket's send buffer so a device that stops
// reading blocks the proxy's writes quickly (autotuning would otherwise absorb
// megabytes).
type smallSendBuf struct{ net.Listener }

func (l smallSendBuf) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// stuckDevice opens a WebSocket by hand with a tiny receive buffer, subscribes,
// and never reads again.
func stuckDevice(t *testing.T, addr, event string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(rawUpgrade(addr)); err != nil {
		t.Fatal(err)
	}
	readUpgradeReply(t, bufio.NewReader(c))
	if _, err := c.Write(maskedSub(event)); err != nil {
		t.Fatal(err)
	}
	return c
}

// rawUpgrade is a WebSocket upgrade request for /v1/ws, written by hand.
func rawUpgrade(addr string) []byte {
	return []byte("GET /v1/ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

// maskedSub is a client sub frame for event (masked with key 0: the payload as is).
func maskedSub(event string) []byte {
	payload := `{"op":"sub","events":{"` + event + `":0}}`
	return append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

// readUpgradeReply reads the proxy's reply to rawUpgrade through its headers.
func readUpgradeReply(t *testing.T, br *bufio.Reader) {
	t.Helper()
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		t.Fatalf("handshake: %q %v", status, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			return
		}
	}
}

// hostOf returns host:port of a ws:// proxy URL.
func hostOf(wsURL string) string {
	return strings.TrimSuffix(strings.TrimPrefix(wsURL, "ws://"), "/v1/ws")
}

// TestSlowDeviceDoesNotDelayOthers: one device never reads. Its writes block (it
// is stuck on the only core writer), yet every other device receives every
// broadcast, and the stuck one is closed as a slow consumer after WriteTimeout.
func TestSlowDeviceDoesNotDelayOthers(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxyOn(t, eng, proxy.Config{Writers: 1, MaxWriters: 8, WriteTimeout: 3 * time.Second, ReportInterval: time.Second},
		func(l net.Listener) net.Listener { return smallSendBuf{l} })
	stuckDevice(t, hostOf(url), "ev")
	const n = 50
	var got [n]atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		dev, err := device.New(device.Config{URLs: []string{url}, Events: map[string]uint64{"ev": 0},
			OnStage: func(f wire.ProxyFrame, _ time.Time) { got[i].Store(f.V) }})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = dev.Run(ctx) }()
	}
	defer wg.Wait()
	defer cancel()
	eventually(t, 10*time.Second, "devices connected", func() bool { return p.Connections() == n+1 })
	subscribed(t, p, n+1)

	// ~100-byte frames: 400 broadcasts overflow the stuck device's few KiB of buffers.
	start := time.Now()
	var last uint64
	for i := 0; i < 400; i++ {
		r, err := eng.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "stage-with-a-longer-name-to-fill-buffers-" + string(rune('a'+i%26)), TS: time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		last = r.Stage.V
		time.Sleep(time.Millisecond)
	}
	eventually(t, 10*time.Second, "every reading device on the last version", func() bool {
		for i := range got {
			if got[i].Load() != last {
				return false
			}
		}
		return true
	})
	othersDone := time.Since(start)
	// The stuck device's write is still blocked (WriteTimeout has not fired): the
	// others did not wait for it.
	if c := p.Connections(); c != n+1 {
		t.Fatalf("reading devices finished after %v, but the stuck device was already closed (%d connections): they waited for it", othersDone, c)
	}
	eventually(t, 15*time.Second, "stuck device closed as slow consumer", func() bool { return p.Connections() == n })
	closedAt := time.Since(start)
	if v := testutil.ToFloat64(metric(t, p, "stagecast_proxy_slow_consumer_closes_total")); v != 1 {
		t.Fatalf("slow consumer closes = %v, want 1", v)
	}
	if v := testutil.ToFloat64(metric(t, p, "stagecast_proxy_extra_writers_total")); v < 1 {
		t.Fatalf("no extra writer was started, yet the core writer was stuck")
	}
	t.Logf("reading devices on v%d after %v; stuck device closed after %v", last, othersDone, closedAt)
}

// TestFrameSentWithHandshake: a device that pipelines its sub frame right behind
// the upgrade request (the bytes sit in net/http's buffer at hijack time) is
// served correctly: it gets the catch-up stage, not a protocol error.
func TestFrameSentWithHandshake(t *testing.T) {
	eng := memEngine(t)
	s := set(t, eng, "ev", "round-1", nil)
	_, url := startProxy(t, eng, proxy.Config{})
	addr := hostOf(url)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append(rawUpgrade(addr), maskedSub("ev")...)); err != nil { // one write: frame and request arrive together
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	readUpgradeReply(t, br)
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	if hdr[0] != 0x81 {
		t.Fatalf("first frame opcode byte %#x, want a text frame (0x81): the pipelined sub was lost", hdr[0])
	}
	body := make([]byte, hdr[1]&0x7f)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	f, err := wire.ParseProxyFrame(body)
	if err != nil || f.Op != wire.OpStage || f.V != s.V {
		t.Fatalf("got %s (%v), want the catch-up stage v%d", body, err, s.V)
	}
}

// TestPingTimeout: a device that stops answering pings is closed after
// PingInterval + PongTimeout; one that answers stays.
func TestPingTimeout(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	addr := hostOf(url)
	stuckDevice(t, addr, "ev") // never reads, so never answers a ping
	alive := dial(t, url)      // a coder/websocket client answers pings while it reads
	go func() {
		for {
			if _, err := alive.next(); err != nil {
				return
			}
		}
	}()
	eventually(t, 5*time.Second, "both connected", func() bool { return p.Connections() == 2 })
	eventually(t, 5*time.Second, "silent device closed", func() bool { return p.Connections() == 1 })
	if v := testutil.ToFloat64(metric(t, p, "stagecast_proxy_ping_timeouts_total")); v != 1 {
		t.Fatalf("ping timeouts = %v, want 1", v)
	}
	// A negative check: nothing to wait for but time. Several more ping rounds
	// (100 ms interval) must pass without closing the device that answers.
	time.Sleep(600 * time.Millisecond)
	if c := p.Connections(); c != 1 {
		t.Fatalf("the answering device was closed too (%d connections)", c)
	}
}

// TestPingsKeepComing: the ping wheel pings a connected device once per
// PingInterval, round after round (never more than one round's worth).
func TestPingsKeepComing(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	var pings atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url+"?device=pinged", &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true }})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	go func() { // reading answers the pings
		for {
			if _, _, err := ws.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	eventually(t, 5*time.Second, "five pings", func() bool { return pings.Load() >= 5 })
	// One per interval, the first at a random moment of the first interval:
	// five pings take more than four intervals.
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("five pings in %v: faster than one per 100 ms interval", el)
	}
}
