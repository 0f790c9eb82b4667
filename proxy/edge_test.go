package proxy_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// A sub to an event that does not exist gets the contract's error frame (with
// the event) and leaves nothing behind: no subscription, no topic.
func TestUnknownEventLeavesNothing(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{})
	d := dial(t, url)
	d.send(`{"op":"sub","events":{"never-created":0}}`)
	f := d.expect(wire.OpError)
	if f.Code != wire.CodeUnknownEvent || f.Event != "never-created" {
		t.Fatalf("%+v, want unknown_event for never-created", f)
	}
	if ev, subs := testutil.ToFloat64(metric(t, p, "stagecast_proxy_events")), testutil.ToFloat64(metric(t, p, "stagecast_proxy_subscriptions")); ev != 0 || subs != 0 {
		t.Fatalf("events %v, subscriptions %v after an unknown event; want 0, 0", ev, subs)
	}
	// Once a producer creates it, the same sub works (the negative answer is
	// cached for MissingTTL only).
	if _, err := eng.PutStageMap(context.Background(), "never-created", []byte(`{"stages":{"a":{"default":{}}}}`), 1); err != nil {
		t.Fatal(err)
	}
	p2, url2 := startProxy(t, eng, proxy.Config{MissingTTL: time.Millisecond})
	d2 := dial(t, url2)
	d2.send(`{"op":"sub","events":{"never-created":0}}`)
	eventually(t, 5*time.Second, "the created event subscribed", func() bool {
		return testutil.ToFloat64(metric(t, p2, "stagecast_proxy_subscriptions")) == 1
	})
}

// A device that stops answering pings gets a close frame with 4001 (best
// effort: here it still reads, so it sees it).
func TestPingTimeoutSendsCloseCode(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	addr := hostOf(url)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(rawUpgrade(addr)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	readUpgradeReply(t, br)
	// Read frames, never answering the pings, until the close frame.
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		n := int(hdr[1] & 0x7f)
		if n == 126 {
			var ext [2]byte
			_, _ = io.ReadFull(br, ext[:])
			n = int(binary.BigEndian.Uint16(ext[:]))
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatal(err)
		}
		if hdr[0]&0x0f == 0x8 { // close
			if len(payload) < 2 || wire.CloseCode(binary.BigEndian.Uint16(payload)) != wire.ClosePingTimeout {
				t.Fatalf("close frame %q, want status 4001", payload)
			}
			return
		}
	}
}

// Concurrent handshakes cannot overshoot MaxConnections: places are reserved
// before the upgrade.
func TestCapacityUnderConcurrentHandshakes(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{MaxConnections: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var ok, refused int
	var wg sync.WaitGroup
	for i := 0; i < 60; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, resp, err := websocket.Dial(ctx, url, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
				t.Cleanup(func() { c.CloseNow() })
			case resp != nil && resp.StatusCode == http.StatusServiceUnavailable:
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 10 || refused != 50 {
		t.Fatalf("%d connected, %d refused; want 10, 50", ok, refused)
	}
	// A client's dial returns on the 101, a moment before the proxy counts the
	// connection as published: wait for it.
	eventually(t, 5*time.Second, "10 held", func() bool { return p.Connections() == 10 })
}

// TestDrainTargetsPatterns (hardening #10): a draining proxy sends devices
// only to published proxies whose host matches its --drain-targets; one that
// anything wrote into the engine with another host is dropped and counted.
func TestDrainTargetsPatterns(t *testing.T) {
	eng := memEngine(t)
	p, url := startProxy(t, eng, proxy.Config{PublicURL: "ws://a.px.test/v1/ws", DrainTargets: []string{"*.px.test"},
		DrainWindow: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now().UnixMilli()
	for _, l := range []engine.ProxyLoad{
		{ID: "evil", URL: "ws://attacker.example/v1/ws", Capacity: 1000, AdmitRate: 1000, AtMS: now},
		{ID: "good", URL: "ws://b.px.test/v1/ws", Capacity: 1000, AdmitRate: 1000, AtMS: now},
	} {
		if err := eng.PutProxyLoad(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	ws, _, err := websocket.Dial(ctx, url+"?device=dt-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	eventually(t, 5*time.Second, "connected", func() bool { return p.Connections() == 1 })
	go p.Drain(ctx)
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("no reconnect frame: %v", err)
		}
		f, err := wire.ParseProxyFrame(b)
		if err != nil || f.Op != wire.OpReconnect {
			continue
		}
		if f.To != "ws://b.px.test/v1/ws" {
			t.Fatalf("directed to %q, want the proxy matching --drain-targets", f.To)
		}
		break
	}
	if n := testutil.ToFloat64(metric(t, p, "stagecast_proxy_drain_targets_refused_total")); n < 1 {
		t.Fatalf("refused targets %v", n)
	}
}
