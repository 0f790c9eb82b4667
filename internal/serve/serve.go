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
		out = append(out, Bound{Server: s, Listener: l})
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
