package proxy_test

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/stagecast/stagecast/internal/serve"
	"github.com/stagecast/stagecast/proxy"
)

// dialVia dials url sending a PROXY v2 header that names client (no header
// when client is "").
func dialVia(ctx context.Context, url, client string) (*websocket.Conn, *http.Response, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || client == "" {
			return c, err
		}
		src := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(client))
		if _, err := proxyproto.HeaderProxyFromAddrs(2, src, c.RemoteAddr()).WriteTo(c); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}}
	return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
}

// TestProxyProtocol (hardening #13): behind a trusted L4 balancer the per-IP
// limits count the devices' addresses from the PROXY header, not the
// balancer's; a header from a peer that is not trusted is refused.
func TestProxyProtocol(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	_, url := startProxyOn(t, memEngine(t), proxy.Config{MaxConnsPerIP: 1}, func(l net.Listener) net.Listener { return serve.ProxyProtocol(l, trusted) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, client := range []string{"198.51.100.1:4000", "198.51.100.2:4000"} {
		c, _, err := dialVia(ctx, url+"?device=d-"+client, client)
		if err != nil {
			t.Fatalf("device %s through the balancer: %v", client, err)
		}
		defer c.CloseNow()
	}
	if _, resp, err := dialVia(ctx, url+"?device=again", "198.51.100.1:4001"); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a second connection from 198.51.100.1: %v %v, want 429 (the limit sees the header's address)", resp, err)
	}

	// Trust only another network: the same header from 127.0.0.1 is refused,
	// and a connection without one is served as sent.
	other := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	_, url2 := startProxyOn(t, memEngine(t), proxy.Config{}, func(l net.Listener) net.Listener { return serve.ProxyProtocol(l, other) })
	if c, _, err := dialVia(ctx, url2+"?device=spoof", "198.51.100.9:4000"); err == nil {
		c.CloseNow()
		t.Fatal("a PROXY header from an untrusted peer was accepted")
	}
	c, _, err := dialVia(ctx, url2+"?device=plain", "")
	if err != nil {
		t.Fatalf("a direct connection: %v", err)
	}
	c.CloseNow()
}
