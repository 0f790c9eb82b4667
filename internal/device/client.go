package device

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/wire"
)

// Config configures a device. Zero values are defaults.
type Config struct {
	// URLs of proxies' /v1/ws endpoints (ws://host:port/v1/ws). Reconnects rotate
	// through them. Required.
	URLs []string
	// RedirectHosts are the host patterns (path.Match) a directed drain's "to"
	// may name; empty: the hosts of URLs and their subdomains. Never wss -> ws
	// (wire.RedirectAllowed).
	RedirectHosts []string
	Device        string
	Platform      string
	Segment       string
	// Token is the device token (a JWT), sent as Authorization: Bearer on the
	// upgrade, never in the URL.
	Token string
	// Events to subscribe to, with the version held (0 = none).
	Events map[string]uint64
	// Ack: send an ack for each stage applied.
	Ack bool
	// HTTPClient dials (set a Transport with a bound LocalAddr to spread source
	// addresses). Default http.DefaultClient.
	HTTPClient *http.Client
	// BackoffBase and BackoffCap shape reconnect backoff. Defaults 500ms, 30s.
	BackoffBase, BackoffCap time.Duration
	// ResubDelay: after an error frame saying an event cannot be subscribed now
	// (unknown_event: not created yet; unavailable; event_limit; rate_limited),
	// subscribe again after U(ResubDelay/2, ResubDelay). Default 10s.
	ResubDelay time.Duration
	// OnStage is called for each stage frame that raised the event's version.
	OnStage func(f wire.ProxyFrame, received time.Time)
	// OnFrame is called for every frame received (including duplicates).
	OnFrame func(f wire.ProxyFrame)
	// OnConnect is called each time a connection is established (the first
	// and every reconnect).
	OnConnect func()
	// Notes makes the device resume its inboxes on every connection
	// ({"op":"inbox","after":<its resume cursor>}); NoteCursor is where it
	// starts ("" = from the oldest kept). InboxURL, when set (a prefetch
	// server's /graphql), is pulled once before the first connection (the
	// offline path; needs Token). AckNotes acks each new note.
	Notes      bool
	NoteCursor string
	InboxURL   string
	AckNotes   bool
	// OnNote is called once per note cursor (duplicates over a reconnect are
	// dropped; OnFrame sees them).
	OnNote func(f wire.ProxyFrame, received time.Time)
	// Rand draws the backoff jitter. Default: a private PCG.
	Rand *rand.Rand
	// Sleep waits (injected in tests). Default: a timer that honours ctx.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Client is one device.
type Client struct {
	cfg Config

	mu     sync.Mutex
	state  map[string]wire.ProxyFrame // event -> highest stage held
	ws     *websocket.Conn
	urlIdx int
	resub  map[string]bool // events waiting for a retried sub (see retrySub)

	redirect   string // a directed drain's target: the next dial goes there
	noteResume string
	seenNotes  map[string]struct{} // note cursors seen, bounded (see markSeen)
	seenOrder  []string

	connected  atomic.Bool
	Reconnects atomic.Int64 // reconnect frames honoured
	// PullErr is the first inbox pull's error (nil: pulled, or no InboxURL).
	// Set before Run connects; read it after Run returned or from OnConnect.
	PullErr error
}

// New validates cfg and returns a device; call Run to connect.
func New(cfg Config) (*Client, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("device: no proxy URL")
	}
	for _, u := range cfg.URLs {
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("device: proxy URL %q: %w", u, err)
		}
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 500 * time.Millisecond
	}
	if cfg.BackoffCap <= 0 {
		cfg.BackoffCap = 30 * time.Second
	}
	if cfg.ResubDelay <= 0 {
		cfg.ResubDelay = 10 * time.Second
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if cfg.Sleep == nil {
		cfg.Sleep = Sleep
	}
	if _, err := wire.ParseAfter(cfg.NoteCursor); err != nil {
		return nil, fmt.Errorf("device: note cursor: %w", err)
	}
	c := &Client{cfg: cfg, state: make(map[string]wire.ProxyFrame), noteResume: cfg.NoteCursor, seenNotes: map[string]struct{}{}}
	for ev, v := range cfg.Events {
		if v > 0 {
			c.state[ev] = wire.ProxyFrame{Op: wire.OpStage, Event: ev, V: v}
		}
	}
	return c, nil
}

// Sleep waits d or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// State returns the highest stage held for event.
func (c *Client) State(event string) (key string, v uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.state[event]
	return f.Key, f.V
}

// Connected reports whether the device is connected now.
func (c *Client) Connected() bool { return c.connected.Load() }

// Run connects and keeps the device connected until ctx ends, reconnecting with
// backoff (or after the proxy's hint). It returns ctx's error, or an error the
// device cannot recover from (4500: credentials rejected).
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.InboxURL != "" {
		// A failed pull is not fatal: the connection's resume reads from the
		// same cursor.
		c.PullErr = c.pullInbox(ctx)
	}
	attempt := 0
	for {
		hint, established, err := c.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var d time.Duration
		switch {
		case hint >= 0:
			d, attempt = hint, 0
			c.Reconnects.Add(1)
		case errors.Is(err, errUnauthorized):
			return err
		default:
			if established {
				attempt = 0 // a connection that got going: this loss starts the backoff afresh
			}
			d = Backoff(attempt, c.cfg.BackoffBase, c.cfg.BackoffCap, c.cfg.Rand.Float64())
			attempt++
			var re *refusedError
			if errors.As(err, &re) {
				d = max(d, re.after)
			}
		}
		c.mu.Lock()
		c.urlIdx = (c.urlIdx + 1) % len(c.cfg.URLs)
		c.mu.Unlock()
		if err := c.cfg.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

var errUnauthorized = errors.New("device: credentials rejected")

// refusedError is an upgrade refused with 503 or 429 and a Retry-After.
type refusedError struct {
	after time.Duration
	err   error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("device dial: refused, retry after %v: %v", e.after, e.err)
}
func (e *refusedError) Unwrap() error { return e.err }

// maxRetryAfter bounds the wait a refusal may ask for (a hostile or broken
// proxy must not park a device for hours).
const maxRetryAfter = 5 * time.Minute

// refusedRetryAfter is the Retry-After of a 503 or 429 upgrade refusal, or 0.
func refusedRetryAfter(resp *http.Response) time.Duration {
	if resp == nil || (resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests) {
		return 0
	}
	s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
	if err != nil || s <= 0 {
		return 0
	}
	return min(time.Duration(s)*time.Second, maxRetryAfter)
}

func (c *Client) dialURL() string {
	c.mu.Lock()
	base := c.cfg.URLs[c.urlIdx]
	if c.redirect != "" { // a directed drain named the proxy: go there once
		base, c.redirect = c.redirect, ""
	}
	c.mu.Unlock()
	u, _ := url.Parse(base)
	q := u.Query()
	for k, v := range map[string]string{"device": c.cfg.Device, "platform": c.cfg.Platform, "segment": c.cfg.Segment} {
		if v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// session runs one connection. It returns the proxy's reconnect hint (>= 0) if
// the proxy asked the device to move, else -1 and why the connection ended.
func (c *Client) session(ctx context.Context) (hint time.Duration, established bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	opts := &websocket.DialOptions{HTTPClient: c.cfg.HTTPClient}
	if c.cfg.Token != "" {
		opts.HTTPHeader = http.Header{"Authorization": {"Bearer " + c.cfg.Token}}
	}
	ws, resp, derr := websocket.Dial(dctx, c.dialURL(), opts)
	cancel()
	if derr != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return -1, false, errUnauthorized
		}
		if ra := refusedRetryAfter(resp); ra > 0 {
			// A refusal with the proxy's (already jittered) wait: the
			// contract says retry after it; the backoff goes on growing for
			// the next failure without one.
			return -1, false, &refusedError{after: ra, err: derr}
		}
		return -1, false, fmt.Errorf("device dial: %w", derr)
	}
	defer ws.CloseNow()
	c.mu.Lock()
	c.ws = ws
	subs := make(map[string]uint64, len(c.cfg.Events))
	for ev := range c.cfg.Events {
		subs[ev] = c.state[ev].V
	}
	c.mu.Unlock()
	c.connected.Store(true)
	defer c.connected.Store(false)
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect()
	}
	if len(subs) > 0 {
		if err := ws.Write(ctx, websocket.MessageText, wire.AppendSub(nil, subs)); err != nil {
			return -1, true, fmt.Errorf("device sub: %w", err)
		}
	}
	if c.cfg.Notes {
		if err := ws.Write(ctx, websocket.MessageText, wire.AppendInbox(nil, c.NoteCursor())); err != nil {
			return -1, true, fmt.Errorf("device inbox: %w", err)
		}
	}
	// Close the socket when ctx ends so Read returns.
	stop := context.AfterFunc(ctx, func() { ws.CloseNow() })
	defer stop()
	hint = time.Duration(-1)
	for {
		_, b, err := ws.Read(context.Background())
		if err != nil {
			if hint >= 0 {
				return hint, true, nil
			}
			if websocket.CloseStatus(err) == websocket.StatusCode(wire.CloseUnauthorized) {
				return -1, true, errUnauthorized
			}
			return -1, true, err
		}
		f, err := wire.ParseProxyFrame(b)
		if err != nil {
			return -1, true, err
		}
		if c.cfg.OnFrame != nil {
			c.cfg.OnFrame(f)
		}
		switch f.Op {
		case wire.OpStage:
			now := time.Now()
			c.mu.Lock()
			held := c.state[f.Event]
			newer := f.V > held.V
			if newer {
				c.state[f.Event] = f
			}
			c.mu.Unlock()
			if !newer {
				continue // at-least-once: a version already held
			}
			if c.cfg.OnStage != nil {
				c.cfg.OnStage(f, now)
			}
			if c.cfg.Ack {
				if err := ws.Write(ctx, websocket.MessageText, wire.AppendAck(nil, f.Event, f.V)); err != nil {
					return -1, true, err
				}
			}
		case wire.OpNote:
			if c.note(f, time.Now()) && c.cfg.AckNotes {
				cur, _ := wire.ParseCursor(f.ID)
				if err := ws.Write(ctx, websocket.MessageText, wire.AppendNoteAck(nil, cur)); err != nil {
					return -1, true, err
				}
			}
		case wire.OpReconnect:
			hint = time.Duration(f.AfterMS) * time.Millisecond
			c.mu.Lock()
			if f.To != "" && wire.RedirectAllowed(c.cfg.URLs[c.urlIdx], f.To, c.cfg.URLs, c.cfg.RedirectHosts) {
				c.redirect = f.To
			}
			c.mu.Unlock()
		case wire.OpError:
			c.retrySub(ctx, ws, f)
		}
	}
}

// retrySub answers an error frame about one event of a sub that a later sub may
// fix (the event does not exist yet, the proxy could not check it, or was at its
// event or rate limit): the event joins the retry set, and one sub frame for the
// whole set goes out after U(ResubDelay/2, ResubDelay) on the same connection
// (one frame, however many events wait). Other errors stand.
func (c *Client) retrySub(ctx context.Context, ws *websocket.Conn, f wire.ProxyFrame) {
	if _, want := c.cfg.Events[f.Event]; !want || f.Event == "" {
		return
	}
	switch f.Code {
	case wire.CodeUnknownEvent, wire.CodeUnavailable, wire.CodeEventLimit, wire.CodeRateLimited:
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resub == nil {
		c.resub = map[string]bool{}
	}
	c.resub[f.Event] = true
	if len(c.resub) > 1 {
		return // a retry is already scheduled
	}
	d := c.cfg.ResubDelay/2 + time.Duration(c.cfg.Rand.Int64N(int64(c.cfg.ResubDelay/2)+1))
	time.AfterFunc(d, func() {
		c.mu.Lock()
		subs := make(map[string]uint64, len(c.resub))
		for ev := range c.resub {
			subs[ev] = c.state[ev].V
		}
		c.resub = nil
		cur := c.ws
		c.mu.Unlock()
		if cur != ws || ctx.Err() != nil {
			return // that connection is gone; the next session subscribes anew
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = ws.Write(wctx, websocket.MessageText, wire.AppendSub(nil, subs))
	})
}

// NewHTTPClient returns an HTTP client whose connections leave from localIP
// (e.g. "127.0.0.2"), to spread many devices over source addresses and pass the
// ~28k ephemeral ports per (source, destination) pair.
func NewHTTPClient(localIP string) *http.Client {
	d := Dialer(localIP)
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: -1}}
}

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT.
const ipBindAddressNoPort = 24

// Dialer returns a dialer bound to localIP (any when empty). It sets
// IP_BIND_ADDRESS_NO_PORT so the kernel picks the source port at connect time,
// per destination: without it, binding an address with port 0 draws from one
// ephemeral range shared by every destination and fails with EADDRINUSE once
// earlier runs' sockets sit in TIME_WAIT.
func Dialer(localIP string) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if localIP == "" {
		return d
	}
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
		}); err != nil {
			return err
		}
		return serr
	}
	return d
}

// Drop closes the current connection abruptly, as a network loss would; Run
// then reconnects with backoff and catches up. It reports whether a connection
// was open.
func (c *Client) Drop() bool {
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	if ws == nil || !c.connected.Load() {
		return false
	}
	_ = ws.CloseNow()
	return true
}

// NoteCursor returns where the device resumes its inboxes.
func (c *Client) NoteCursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.noteResume
}

// maxSeenNotes bounds the cursors remembered for dropping duplicates.
const maxSeenNotes = 4096

// note records a note frame; it reports whether the note is new.
func (c *Client) note(f wire.ProxyFrame, now time.Time) bool {
	c.mu.Lock()
	if f.Resume != "" {
		c.noteResume = f.Resume
	}
	_, dup := c.seenNotes[f.ID]
	if !dup {
		c.seenNotes[f.ID] = struct{}{}
		c.seenOrder = append(c.seenOrder, f.ID)
		if len(c.seenOrder) > maxSeenNotes {
			delete(c.seenNotes, c.seenOrder[0])
			c.seenOrder = c.seenOrder[1:]
		}
	}
	c.mu.Unlock()
	if !dup && c.cfg.OnNote != nil {
		c.cfg.OnNote(f, now)
	}
	return !dup
}

// pullInbox pulls everything after the resume cursor through the prefetch API
// (pages of 100, at most 10) and moves the cursor.
func (c *Client) pullInbox(ctx context.Context) error {
	for range 10 {
		page, err := PullInbox(ctx, c.cfg.HTTPClient, c.cfg.InboxURL, c.cfg.Token, c.NoteCursor(), 100)
		if err != nil {
			return err
		}
		for _, f := range page.Notes {
			c.note(f, time.Now())
		}
		c.mu.Lock()
		c.noteResume = page.Next
		c.mu.Unlock()
		if len(page.Notes) < 100 {
			return nil
		}
	}
	return nil
}

// Config returns c's configuration with its defaults filled in.
func (c *Client) Config() Config { return c.cfg }
