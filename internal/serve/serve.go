// Package serve runs stagecast's HTTP servers: it listens on every address first
// (so a port clash fails the start, not later), serves until the context ends,
// then runs the caller's drain step and shuts the servers down gracefully.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Server is one HTTP server to run.
type Server struct {
	Name    string // for logs: "proxy", "broadcaster", ...
	Addr    string // host:port; port 0 picks a free one
	Handler http.Handler
	// Upgrades marks a server whose requests become long-lived WebSocket
	// connections (the proxy): it gets no ReadTimeout/WriteTimeout, whose
	// deadlines would stay on the hijacked connection.
	Upgrades bool
	// ProxyProtocolFrom lists the load balancers (CIDRs) whose connections may
	// open with a PROXY protocol header (v1 or v2): their client address is the
	// header's, so per-IP limits see the device, not the balancer. A header
	// from any other peer is refused; a connection without one is served as
	// sent. Empty: the PROXY protocol is off.
	ProxyProtocolFrom []netip.Prefix
}

// ProxyHeaderTimeout bounds how long a connection from a trusted balancer may
// take to send its PROXY header.
const ProxyHeaderTimeout = time.Second

// ProxyProtocol wraps l so that connections from trusted may carry a PROXY
// protocol header (see Server.ProxyProtocolFrom); with no trusted prefix it
// returns l. The policy is set explicitly: go-proxyproto's own default
// (REQUIRE, from any peer) would trust every client's header.
func ProxyProtocol(l net.Listener, trusted []netip.Prefix) net.Listener {
	if len(trusted) == 0 {
		return l
	}
	ranges := make([]string, len(trusted))
	for i, p := range trusted {
		ranges[i] = p.String()
	}
	return &proxyproto.Listener{Listener: l, ConnPolicy: proxyproto.MustPolicyFromRanges(ranges, proxyproto.USE, proxyproto.REJECT),
		ReadHeaderTimeout: ProxyHeaderTimeout}
}

// Limits every server gets: a request's line and headers are at most
// MaxHeaderBytes (a GET /graphql query included) and must arrive within
// ReadHeaderTimeout; a request that is not an upgrade must be read within
// ReadTimeout and answered within WriteTimeout.
const (
	MaxHeaderBytes    = 32 << 10
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 60 * time.Second
)

// Bound is a server that listens, with its actual address.
type Bound struct {
	Server
	Listener net.Listener
}

// Listen binds every server's address, closing all on the first failure.
func Listen(servers []Server) ([]Bound, error) {
	out := make([]Bound, 0, len(servers))
	for _, s := range servers {
		l, err := net.Listen("tcp", s.Addr)
		if err != nil {
			for _, b := range out {
				b.Listener.Close()
			}
			return nil, fmt.Errorf("%s: listen on %s: %w", s.Name, s.Addr, err)
		}
		out = append(out, Bound{Server: s, Listener: ProxyProtocol(l, s.ProxyProtocolFrom)})
	}
	return out, nil
}

// Run serves the bound servers until ctx ends, then calls drain (if set) with a
// context bounded by grace, then shuts the HTTP servers down. It returns the first
// serve error, if any server failed.
func Run(ctx context.Context, log *slog.Logger, bound []Bound, grace time.Duration, drain func(context.Context)) error {
	errc := make(chan error, len(bound))
	srvs := make([]*http.Server, len(bound))
	for i, b := range bound {
		srvs[i] = &http.Server{Handler: b.Handler, ReadHeaderTimeout: ReadHeaderTimeout, IdleTimeout: 120 * time.Second,
			MaxHeaderBytes: MaxHeaderBytes, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		if !b.Upgrades {
			srvs[i].ReadTimeout, srvs[i].WriteTimeout = ReadTimeout, WriteTimeout
		}
		log.Info("listening", "server", b.Name, "addr", b.Listener.Addr().String())
		go func(s *http.Server, l net.Listener, name string) {
			if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}(srvs[i], b.Listener, b.Name)
	}
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("server failed; shutting down", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if drain != nil {
		drain(sctx)
	}
	for _, s := range srvs {
		_ = s.Shutdown(sctx)
	}
	return runErr
}

// ClientIP is the TCP peer's address of r (never a client-supplied header),
// with IPv4-mapped IPv6 addresses unmapped.
func ClientIP(r *http.Request) netip.Addr {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}
