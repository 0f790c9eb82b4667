package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/serve"
	"github.com/stagecast/stagecast/internal/wire"
)

// Engine is what the proxy needs from the engine.
type Engine interface {
	Recent(ctx context.Context, event string, n int) ([]wire.Stage, error)
	Subscribe(ctx context.Context, event string, onStage func(wire.Stage), onSubscribed func()) error
	PutDelivery(ctx context.Context, r engine.DeliveryReport) error
	Exists(ctx context.Context, event string) (bool, error)
	// Notifications.
	Register(ctx context.Context, proxy string, add, remove []engine.Inbox) error
	SubscribeNotes(ctx context.Context, proxy string, onPush func(engine.NotePush), onSubscribed func(shard int)) error
	ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error)
	MarkRead(ctx context.Context, marks map[engine.Inbox]wire.Pos) error
	PutNoteDelivery(ctx context.Context, counts map[string]engine.NoteCount) error
	// Armed stages.
	Schedules(ctx context.Context, event string) ([]wire.Stage, error)
	Time(ctx context.Context) (time.Time, error)
	// Directed drain.
	PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error
	ProxyLoads(ctx context.Context, nowMS int64) ([]engine.ProxyLoad, error)
}

// Server is one WebSocket proxy. Create it with New, serve Handler, and end it
// with Drain (graceful) and/or Close.
type Server struct {
	cfg     Config
	eng     Engine
	log     *slog.Logger
	metrics *metrics
	reg     *prometheus.Registry // nil when cfg.Registerer was given
	hub     *hub
	notes   *noteHub
	// segments names the segment slots of the delivery counters (segments.go)
	segments *labelTable
	// act counts connects, disconnects and refusals between reports (activity.go)
	act     *activity
	writers *writerPool
	pings   pingWheel     // every conn's pings (pinger.go)
	frames  chan frameJob // device frames to the frame handlers (see readLoop)
	admit   *rate.Limiter
	ips     *ipLimits
	exists  *eventChecker
	closing chan struct{} // handshake-close slots (see conn.closeWith)

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // topic goroutines and the report loop

	randMu sync.Mutex

	connsMu       sync.Mutex
	conns         map[*conn]struct{}
	perIP         map[netip.Addr]int // open and reserved connections per source IP (non-exempt only)
	reserved      int                // connections in their handshake
	draining      atomic.Bool
	reach         reachability // the engine answers our writes (loadLoop)
	closed        atomic.Bool
	skewOK        atomic.Bool // the clock is within MaxClockSkew of the engine's: armed stages fire here
	skewMeasured  atomic.Bool
	prefetchLevel atomic.Int32 // the prefetch tier's shedding level (paced broadcasts)
}

// New fills cfg's zero fields from DefaultConfig, validates it and starts a
// proxy's background work (writers, reports).
func New(cfg Config, eng Engine) (*Server, error) {
	defaults.Fill(&cfg, DefaultConfig())
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) // one source per server, not a shared default
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if eng == nil {
		return nil, errors.New("proxy: nil engine")
	}
	s := &Server{cfg: cfg, eng: eng, log: cfg.Logger.With("component", "proxy", "proxy", cfg.ID),
		conns: make(map[*conn]struct{}), perIP: make(map[netip.Addr]int),
		admit:   rate.NewLimiter(rate.Limit(cfg.AdmitRate), cfg.AdmitBurst),
		closing: make(chan struct{}, maxClosing)}
	s.ips = newIPLimits(&s.cfg)
	s.exists = newEventChecker(&s.cfg, eng)
	reg := cfg.Registerer
	if reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg = s.reg
	}
	s.metrics = newMetrics(reg)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.hub = newHub(s)
	s.segments = newSegmentTable()
	s.act = newActivity(s.cfg.Now())
	s.notes = newNoteHub(s)
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "proxy", Name: "backlog_reads_in_flight",
			Help: "Inbox backlog reads running (resumes and resyncs; bounded by --max-resumes)."},
			func() float64 { return float64(s.notes.resumesInFlight()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "proxy", Name: "resyncs_queued",
			Help: "Connection inboxes waiting for a backlog-read slot to be re-read (after a resubscribe or a gap)."},
			func() float64 { return float64(s.notes.resyncsQueued()) }))
	s.notes.run(s.ctx)
	s.writers = newWriterPool(cfg.Writers, cfg.MaxWriters, cfg.WriteTimeout, s.metrics)
	s.frames = make(chan frameJob)
	for i := 0; i < 2*runtimeProcs(); i++ {
		s.wg.Add(1)
		go s.frameHandler()
	}
	s.wg.Add(2)
	go s.reportLoop()
	go s.loadLoop()
	s.wg.Add(2)
	go s.skewLoop()
	go s.pingLoop()
	return s, nil
}

// maxClosing bounds the connections waiting on a close handshake at once.
const maxClosing = 1024

// ID is the proxy's id (Config.ID, or the default it was given).
func (s *Server) ID() string { return s.cfg.ID }

// Config returns the configuration the server runs with: its Config with
// the zero fields filled from DefaultConfig.
func (s *Server) Config() Config { return s.cfg }

// Registry returns the proxy's own registry (nil if Config.Registerer was set).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Connections returns the number of connected devices.
func (s *Server) Connections() int {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	return len(s.conns)
}

// Handler serves /v1/ws, /healthz, /readyz and (with its own registry) /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ws", s.serveWS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.draining.Load() || s.closed.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		if !s.notes.ready() {
			http.Error(w, "note push subscriptions not up yet", http.StatusServiceUnavailable)
			return
		}
		if s.reach.lost.Load() {
			http.Error(w, "engine (Redis) unreachable: connected devices are kept, new ones should go elsewhere", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	if s.reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	}
	return mux
}

func (s *Server) jitterBetween(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	s.randMu.Lock()
	defer s.randMu.Unlock()
	return lo + time.Duration(s.cfg.Rand.Int64N(int64(hi-lo)))
}

func (s *Server) reject(w http.ResponseWriter, reason string, status int, msg string) {
	s.rejectReq(w, nil, reason, status, msg)
}

// rejectReq refuses an upgrade. A back-off refusal (503, 429) carries a
// jittered Retry-After. A browser (it sends Origin) cannot read the status of
// a refused upgrade, only "connection failed", so it is accepted instead and
// closed with a status it can read: a back-off is told
// {"op":"reconnect","after_ms":N} and closed 1013 with "retry after N ms" as
// the reason (hardening #12); a refused token (401) is closed 4500 with the
// reason, so the page stops retrying with that token. Those handshakes share
// the close slots (maxClosing); with none free the browser gets the plain
// HTTP refusal.
func (s *Server) rejectReq(w http.ResponseWriter, r *http.Request, reason string, status int, msg string) {
	s.metrics.rejected.WithLabelValues(reason).Inc()
	s.act.refused(reason)
	backOff := status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests
	ra := s.jitterBetween(s.cfg.RetryAfter, 2*s.cfg.RetryAfter)
	if (backOff || status == http.StatusUnauthorized) && r != nil && r.Header.Get("Origin") != "" {
		select {
		case s.closing <- struct{}{}:
			defer func() { <-s.closing }()
			ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.cfg.OriginPatterns, CompressionMode: websocket.CompressionDisabled})
			if err != nil {
				return // a disallowed origin: Accept answered 403
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if !backOff {
				_ = ws.Close(websocket.StatusCode(wire.CloseUnauthorized), closeReason(msg))
			} else if ws.Write(ctx, websocket.MessageText, wire.AppendReconnect(nil, ra.Milliseconds())) == nil {
				_ = ws.Close(websocket.StatusCode(wire.CloseTryAgainLater), closeReason(fmt.Sprintf("retry after %d ms: %s", ra.Milliseconds(), reason)))
			}
			ws.CloseNow()
			return
		default:
		}
	}
	if backOff {
		w.Header().Set("Retry-After", strconv.Itoa(int((ra+time.Second-1)/time.Second)))
	}
	http.Error(w, msg, status)
}

// maxCloseReason is the longest close reason a close frame carries (RFC 6455:
// 125 bytes of payload, 2 of them the status).
const maxCloseReason = 123

// closeReason cuts msg to maxCloseReason bytes, on a UTF-8 boundary.
func closeReason(msg string) string {
	if len(msg) <= maxCloseReason {
		return msg
	}
	cut := maxCloseReason
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut]
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	device, platform, segment := q.Get("device"), q.Get("platform"), q.Get("segment")
	ip := serve.ClientIP(r)
	limitIP := !s.ips.exempted(ip)
	switch {
	case s.draining.Load() || s.closed.Load():
		s.rejectReq(w, r, "draining", http.StatusServiceUnavailable, "proxy is draining: connect to another proxy")
		return
	case len(device) > 128:
		s.reject(w, "bad_request", http.StatusBadRequest, "device id longer than 128 bytes")
		return
	case platform != "" && !wire.ValidID(platform):
		s.reject(w, "bad_request", http.StatusBadRequest, wire.CheckID("platform", platform).Error())
		return
	case segment != "" && !wire.ValidID(segment):
		s.reject(w, "bad_request", http.StatusBadRequest, wire.CheckID("segment", segment).Error())
		return
	case limitIP && s.cfg.IPAdmitRate > 0 && !s.ips.allow(ip):
		s.rejectReq(w, r, "ip_rate", http.StatusTooManyRequests, "too many new connections from this address: retry later")
		return
	}
	// Admission before the signature check (about 60 us of CPU): the admission
	// rate bounds what forged tokens can cost, too.
	switch {
	case s.Connections() >= s.cfg.MaxConnections:
		s.rejectReq(w, r, "capacity", http.StatusServiceUnavailable, "proxy at capacity: retry later or connect to another proxy")
		return
	case !s.admit.Allow():
		s.rejectReq(w, r, "rate", http.StatusServiceUnavailable, "too many new connections: retry later")
		return
	}
	var claims devicetoken.Claims
	if s.cfg.Tokens != nil {
		tok := bearer(r)
		if tok != "" || s.cfg.RequireToken {
			var err error
			if claims, err = s.cfg.Tokens.Verify(tok); err != nil {
				// The reason, never the token.
				s.rejectReq(w, r, "unauthorized", http.StatusUnauthorized, "unauthorized: "+err.Error())
				return
			}
			device = claims.Device
			if claims.Platform != "" {
				platform = claims.Platform
			}
			if claims.Segment != "" {
				segment = claims.Segment
			}
		}
	}
	if platform == "" {
		platform = "unknown"
	}
	c := &conn{s: s, pingSlot: -1, device: device, platform: platform, segment: segment, label: platformLabel(platform), plat: platformIndex(platformLabel(platform)),
		ip: ip, ipLimit: limitIP && s.cfg.MaxConnsPerIP > 0, events: claims.Events}
	c.setInboxes(claims.Member, device, claims.Device != "")
	c.sampled = s.cfg.SampleDevice != nil && s.cfg.OnDeviceSample != nil && s.cfg.SampleDevice(device)
	// Reserve the place before the handshake, so concurrent upgrades cannot
	// overshoot MaxConnections or MaxConnsPerIP.
	if reason := s.reserve(c); reason != "" {
		if reason == "ip_capacity" {
			s.rejectReq(w, r, reason, http.StatusTooManyRequests, "too many connections from this address")
		} else {
			s.rejectReq(w, r, reason, http.StatusServiceUnavailable, "proxy at capacity or draining: connect to another proxy")
		}
		return
	}
	ws, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{
		// Native devices send no Origin and pass; a browser page must come from
		// the proxy's own host or match OriginPatterns.
		OriginPatterns:  s.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.metrics.rejected.WithLabelValues("handshake").Inc()
		s.act.refused("handshake")
		s.unreserve(c)
		return
	}
	c.cell = cellOf(c.plat, uint8(s.segments.slot(segment)))
	ws.SetReadLimit(s.cfg.ReadLimit)
	// Everything the conn needs is set before it is published (publish takes
	// connsMu: a happens-before edge to every later reader of the fields).
	c.ws = ws
	// The expiry timer is set under c.mu: its callback (and unregister) read
	// it under it, however soon it fires.
	c.mu.Lock()
	if !claims.Expiry.IsZero() {
		c.expTimer = time.AfterFunc(claims.Expiry.Sub(s.cfg.Now()), func() {
			s.metrics.tokenExpired.Inc()
			c.sendControl(nil, wire.CloseTokenExpired, "token expired")
		})
	}
	c.mu.Unlock()
	// The ping wheel and the inboxes take c before it is published, so an
	// unregister (drain, close) always finds it there to leave.
	s.randMu.Lock()
	slot := s.cfg.Rand.IntN(pingSlots)
	s.randMu.Unlock()
	s.pings.add(c, slot)
	for _, ci := range c.inboxes {
		if ci != nil {
			s.notes.join(c, ci.ib)
		}
	}
	if !s.publish(c) {
		for _, ci := range c.inboxes {
			if ci != nil {
				s.notes.leave(c, ci.ib)
			}
		}
		c.stopTimers()
		_ = ws.Close(websocket.StatusCode(wire.CloseServiceRestart), "proxy is draining")
		return
	}
	c.sample(DeviceSample{Kind: "connect"})
	// The request goroutine (and net/http's per-connection state) ends here; the
	// conn's only long-lived goroutine is its reader.
	go c.readLoop()
}

// reserve holds a place for c (a connection in its handshake); it returns the
// reject reason, or "" when reserved. Reserved places count toward
// MaxConnections and MaxConnsPerIP.
func (s *Server) reserve(c *conn) string {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	switch {
	case s.draining.Load() || s.closed.Load():
		return "draining"
	case len(s.conns)+s.reserved >= s.cfg.MaxConnections:
		return "capacity"
	case c.ipLimit && s.perIP[c.ip] >= s.cfg.MaxConnsPerIP:
		return "ip_capacity"
	}
	s.reserved++
	if c.ipLimit {
		s.perIP[c.ip]++
	}
	return ""
}

// unreserve gives a reserved place back (handshake failed).
func (s *Server) unreserve(c *conn) {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	s.reserved--
	s.dropIP(c)
}

// publish turns c's reservation into a connection; false (place given back)
// when the proxy started draining meanwhile.
func (s *Server) publish(c *conn) bool {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	s.reserved--
	if s.draining.Load() || s.closed.Load() {
		s.dropIP(c)
		return false
	}
	s.conns[c] = struct{}{}
	s.metrics.connections.WithLabelValues(c.label).Inc()
	s.act.connect()
	return true
}

func (s *Server) removeConn(c *conn) {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.dropIP(c)
		s.metrics.connections.WithLabelValues(c.label).Dec()
	}
}

// dropIP uncounts c from its source IP. Caller holds connsMu.
func (s *Server) dropIP(c *conn) {
	if !c.ipLimit {
		return
	}
	if n := s.perIP[c.ip] - 1; n > 0 {
		s.perIP[c.ip] = n
	} else {
		delete(s.perIP, c.ip)
	}
}

func (s *Server) snapshotConns() []*conn {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// frameJob is one device frame handed from a reader to a frame handler.
type frameJob struct {
	c *conn
	b []byte
}

// frameHandler parses and applies device frames. Parsing (encoding/json) and
// subscribing run deep call chains; doing them here, not on the readers, keeps
// every reader's stack at its initial 4 KiB instead of growing it to 8 KiB for
// good: half the stack memory per idle device. A sub that needs engine lookups
// (events not in the existence cache) moves to a goroutine of its own, so a slow
// engine never holds a frame handler; the reader still waits for it, so a
// connection's frames apply in order.
func (s *Server) frameHandler() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case j := <-s.frames:
			j.c.process(j.b)
		}
	}
}

// readLoop reads device frames until the connection ends. It hands each frame
// to a frame handler and waits for the answer, so a connection's frames apply in
// order and at most one goroutine at a time processes them.
func (c *conn) readLoop() {
	// A read error without a close frame (the device's TCP connection reset
	// or ended) leaves coder/websocket's conn open until its finalizer runs:
	// close it here, so the socket's file is released at once, not at some
	// later GC (a connect storm's leavers would hold files meanwhile).
	defer func() {
		c.unregister()
		_ = c.ws.CloseNow()
	}()
	s := c.s
	c.handled = make(chan bool, 1)
	for {
		typ, b, err := c.ws.Read(context.Background())
		if err != nil {
			return // closed, read limit (coder/websocket closes with 1009), or protocol error
		}
		switch c.allowFrame(s.cfg.Now()) {
		case frameLimited:
			c.sendError(wire.CodeRateLimited, fmt.Sprintf("more than %d frames per second", s.cfg.MaxFramesPerSecond))
			c.endFrame()
			continue
		case frameFlood:
			// As every close with a frame (proxy/doc.go): unregistered first,
			// the handshake in a close slot, never on the reader.
			s.metrics.badFrames.WithLabelValues("flood").Inc()
			c.closeWith(wire.ClosePolicy, "frame rate far above the limit")
			return
		}
		if typ != websocket.MessageText {
			s.metrics.badFrames.WithLabelValues("binary").Inc()
			c.closeWith(wire.CloseUnsupportedData, "text frames only")
			return
		}
		select {
		case s.frames <- frameJob{c: c, b: b}:
		case <-s.ctx.Done():
			return
		}
		if keep := <-c.handled; !keep {
			_ = c.ws.Close(websocket.StatusCode(wire.CloseInvalidFrame), "frame is not valid UTF-8 JSON")
			return
		}
	}
}

// process parses and applies one device frame, then answers the reader on
// c.handled: false means the frame was not JSON (or not UTF-8) and the
// connection must be closed (1007).
func (c *conn) process(b []byte) {
	s := c.s
	f, err := wire.ParseDeviceFrame(b)
	if errors.Is(err, wire.ErrNotJSON) {
		s.metrics.badFrames.WithLabelValues("invalid_json").Inc()
		c.handled <- false
		return
	}
	var fe *wire.FrameError
	if errors.As(err, &fe) {
		c.sendError(fe.Code, fe.Msg)
		c.endFrame()
		c.handled <- true
		return
	}
	if f.Op == wire.OpSub && len(f.Sub) <= s.cfg.MaxSubscriptions && c.needsLookup(f.Sub) {
		go func() {
			c.handle(f)
			c.endFrame()
			c.handled <- true
		}()
		return
	}
	c.handle(f)
	c.endFrame()
	c.handled <- true
}

// needsLookup reports whether a sub names an event the existence cache cannot
// answer (so subscribing may wait on the engine).
func (c *conn) needsLookup(events map[string]uint64) bool {
	for ev := range events {
		if _, ok := c.s.exists.cached(ev); !ok {
			return true
		}
	}
	return false
}

func (c *conn) handle(f wire.DeviceFrame) {
	s := c.s
	switch f.Op {
	case wire.OpSub:
		if len(f.Sub) > s.cfg.MaxSubscriptions {
			c.sendError(wire.CodeBadRequest, fmt.Sprintf("a sub may name at most %d events; none subscribed", s.cfg.MaxSubscriptions))
			return
		}
		for ev, have := range f.Sub {
			c.subscribe(ev, have)
		}
	case wire.OpUnsub:
		for _, ev := range f.Unsub {
			if !s.hub.unsubscribe(c, ev) {
				c.sendEventError(wire.CodeUnknownEvent, ev, "not subscribed to "+ev)
			}
		}
	case wire.OpInbox:
		c.handleInbox(f.After)
	case wire.OpAck:
		if f.NoteAck {
			if msg := c.ackNote(f.Note); msg != "" {
				c.sendError(wire.CodeBadRequest, msg)
			}
			return
		}
		if !c.ack(f.Event, f.V) {
			c.sendEventError(wire.CodeUnknownEvent, f.Event, "ack for an event not subscribed: "+f.Event)
		}
	}
}

// subscribe admits one event of a sub: every check runs before anything is
// created for it (the token's evs, the per-connection budget, existence, then
// the hub's per-connection and per-proxy caps).
func (c *conn) subscribe(ev string, have uint64) {
	s := c.s
	c.mu.Lock()
	held := c.subByEvent(ev) != nil
	c.mu.Unlock()
	if !held {
		if !c.events.Match(ev) {
			c.sendEventError(wire.CodeUnauthorized, ev, "the device token does not allow event "+ev)
			return
		}
		if !windowAllow(s.cfg.Now(), &c.subWin, &c.subCount, s.cfg.SubscribeBudget) {
			c.sendEventError(wire.CodeRateLimited, ev, fmt.Sprintf("more than %d new subscriptions a minute", s.cfg.SubscribeBudget))
			return
		}
		switch s.exists.check(s.ctx, ev) {
		case eventMissing:
			c.sendEventError(wire.CodeUnknownEvent, ev, "no such event: "+ev)
			return
		case eventUnchecked:
			c.sendEventError(wire.CodeUnavailable, ev, "cannot check event "+ev+" now; retry the sub later")
			return
		}
	}
	switch s.hub.subscribe(c, ev, have) {
	case subTooMany:
		c.sendEventError(wire.CodeTooManySubscriptions, ev, fmt.Sprintf("at most %d events per connection; %s not subscribed", s.cfg.MaxSubscriptions, ev))
	case subEventLimit:
		s.metrics.eventLimit.Inc()
		c.sendEventError(wire.CodeEventLimit, ev, "this proxy holds as many events as it may; retry later")
	}
}

// Drain stops admitting devices and, over DrainWindow, tells each connected
// device to reconnect elsewhere (a reconnect frame with after_ms ~
// U(0, ReconnectJitter), then close 1012), each at a uniformly random moment of the
// window. It returns when every device is gone or ctx ends.
func (s *Server) Drain(ctx context.Context) error {
	if s.draining.Swap(true) {
		return errors.New("proxy: already draining")
	}
	s.metrics.draining.Set(1)
	conns := s.snapshotConns()
	s.randMu.Lock()
	s.cfg.Rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	s.randMu.Unlock()
	plans, targets := s.planDrain(ctx, len(conns))
	s.log.Info("draining", "devices", len(conns), "window", s.cfg.DrainWindow.String(), "directed_to", targets)
	start := time.Now()
	for i, c := range conns {
		if d := plans[i].send - time.Since(start); d > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("proxy drain: %d of %d devices not yet told: %w", len(conns)-i, len(conns), ctx.Err())
			case <-time.After(d):
			}
		}
		frame := wire.AppendReconnect(nil, plans[i].afterMS)
		if plans[i].to != "" {
			frame = wire.AppendReconnectTo(nil, plans[i].afterMS, plans[i].to)
		}
		c.sendControl(frame, wire.CloseServiceRestart, "proxy draining")
	}
	for s.Connections() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy drain: %d devices still connected: %w", s.Connections(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.log.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// Close ends every connection now and stops background work. Call Drain first for
// a graceful stop.
func (s *Server) Close() {
	if s.closed.Swap(true) {
		return
	}
	for _, c := range s.snapshotConns() {
		c.abort()
	}
	s.flushReport(context.Background())
	s.cancel()
	s.hub.closeAll()
	s.wg.Wait()
	s.writers.close()
}

// smallBuffers hands coder/websocket smaller bufio buffers than net/http's 4 KiB
// pair: device frames are tiny, and memory per idle device is what limits a proxy.
// Frames larger than the buffers are still read and written whole.
type smallBuffers struct{ http.ResponseWriter }

// readBufSize holds a whole typical device frame (a sub, an ack: tens of
// bytes); a larger one, up to Config.ReadLimit, is read in more than one
// read. writeBufSize holds a whole stage frame, so each is one write(2).
// Halving the read buffer from 512 took 0.3 KiB off each device
// (docs/benchmarks.md, issue 22 item 2).
const (
	readBufSize  = 256
	writeBufSize = 512
)

func (w smallBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Bytes the device sent right behind its upgrade request may already sit in
	// net/http's reader. coder/websocket re-points the returned reader at the
	// returned conn (Reset), so those bytes must travel with the conn itself.
	var rc net.Conn = nc
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		rc = &prefixConn{Conn: nc, prefix: bytes.Clone(b)}
	}
	return rc, bufio.NewReadWriter(bufio.NewReaderSize(rc, readBufSize), bufio.NewWriterSize(nc, writeBufSize)), nil
}

// prefixConn returns prefix before reading from the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
