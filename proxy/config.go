package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"time"

	"github.com/stagecast/stagecast/internal/engine"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a proxy. The zero value of every field is its documented
// default; Validate fills them in and rejects nonsense.
type Config struct {
	// ID names this proxy in delivery reports. Default: hostname-pid.
	ID string
	// MaxConnections caps concurrent devices; upgrades past it get 503. Default 200000.
	MaxConnections int
	// MaxSubscriptions caps events per connection. Default 16.
	MaxSubscriptions int
	// ReadLimit is the largest device frame in bytes; larger closes with 1009. Default 4096.
	ReadLimit int64
	// MaxFramesPerSecond per connection; above it frames are answered with
	// rate_limited, and a device at ten times the rate is closed (1008). Default 20.
	MaxFramesPerSecond int
	// WriteTimeout bounds one write to a device; a device that cannot take a frame in
	// this time is closed as a slow consumer (4000). Default 5s.
	WriteTimeout time.Duration
	// PingInterval between WebSocket pings (the first comes at a random moment
	// of the first interval: the ping wheel's slot). Default 25s.
	PingInterval time.Duration
	// PongTimeout: a device that does not answer a ping in this time is closed (4001). Default 10s.
	PongTimeout time.Duration
	// AdmitRate is the steady rate of new connections per second; AdmitBurst its
	// burst. Above it upgrades get 503 with a jittered Retry-After. Defaults 2000, 2000.
	AdmitRate  float64
	AdmitBurst int
	// RetryAfter is the base of the jittered Retry-After for rejected upgrades:
	// U(RetryAfter, 2*RetryAfter) seconds. Default 5s.
	RetryAfter time.Duration
	// DrainWindow spreads the reconnect of all devices on drain: each device gets
	// its reconnect frame at a uniformly random moment in the window. Default 30s.
	DrainWindow time.Duration
	// ReconnectJitter is the max after_ms of each reconnect frame: U(0, ReconnectJitter). Default 2s.
	ReconnectJitter time.Duration
	// Writers is the number of writer goroutines kept; MaxWriters the most the pool
	// grows to when writers are stuck on slow devices. Defaults 4*GOMAXPROCS(min 8), 1024.
	Writers    int
	MaxWriters int
	// HistoryLen is how many recent stage changes per event the proxy keeps for
	// catch-up (also read from the engine on (re)subscribe). Default 64.
	HistoryLen int
	// StatsVersions is how many versions per event keep delivery counters. Default 16.
	StatsVersions int
	// ReportInterval between delivery reports to the engine. Default 1s.
	ReportInterval time.Duration
	// EngineLostAfter: when every write to the engine (the load the proxy
	// publishes each ReportInterval) has failed for this long, the proxy counts
	// itself cut off: /readyz fails, so that load balancers send new devices
	// elsewhere, and stagecast_proxy_engine_reachable is 0. Its devices stay
	// connected, on the stage they hold. When a write succeeds again every
	// event re-reads its history at once. Default 3s.
	EngineLostAfter time.Duration
	// OnReport, when set, is given each delivery report as it is built (the
	// analytics stream's delivery aggregates). It runs on the report loop and
	// must not block; the fanout path never calls it.
	OnReport func(engine.DeliveryReport)
	// OnActivity, when set, is given the connects, disconnects and refusals
	// since the previous report, on the report loop (it must not block).
	OnActivity func(Activity)
	// SampleDevice and OnDeviceSample (set both, or neither): a device for
	// which SampleDevice returns true (asked once per connection, so a hash of
	// the device id samples the same devices on every proxy) has its connect,
	// each stage written (with its latency), each ack and its disconnect given
	// to OnDeviceSample, which must not block (the analytics stream's sample).
	SampleDevice   func(device string) bool
	OnDeviceSample func(DeviceSample)
	// ReconcileInterval: every topic re-reads the event's recent stages this often
	// (jittered), a safety net under pub/sub. Default 30s.
	ReconcileInterval time.Duration
	// TopicLinger keeps an event's subscription this long after its last device
	// leaves, so flapping devices do not churn the engine. Default 60s.
	TopicLinger time.Duration
	// Tokens verifies device tokens (Ed25519 JWTs). When set, a token presented
	// on the upgrade (Authorization: Bearer, or ?token=) must verify, else 401,
	// and its claims override the query's device, platform and segment. Nil: no
	// verification (tokens are ignored); RequireToken then fails Validate.
	Tokens TokenVerifier
	// RequireToken rejects upgrades without a valid token (401).
	RequireToken bool
	// MaxEvents caps the events (topics, engine subscriptions) one proxy holds;
	// a sub past it gets event_limit. Default 10000.
	MaxEvents int
	// SubscribeBudget caps new subscriptions per connection per minute (each
	// event named in a sub the connection does not hold yet counts, whether it
	// exists or not); past it, rate_limited. Default 60.
	SubscribeBudget int
	// ErrorBudget: a connection that sends more frames earning an error frame
	// than this in a minute is closed (1008), whether it reads the errors or
	// not. Default 30.
	ErrorBudget int
	// ExistsTTL and MissingTTL: how long the proxy trusts "event exists" and
	// "event does not exist" answers from the engine. Defaults 30s and 5s.
	ExistsTTL  time.Duration
	MissingTTL time.Duration
	// LookupRate caps engine lookups of events not in the cache, per second per
	// proxy; a sub past it gets unavailable (retry). Default 1000.
	LookupRate float64
	// MaxConnsPerIP caps concurrent connections from one source IP (429 above);
	// IPAdmitRate/IPAdmitBurst cap new connections per second from one IP.
	// Defaults 1000, 20, 100; a negative value turns a limit off. Addresses in IPLimitExempt
	// (e.g. a load generator's loopback range) are not limited.
	MaxConnsPerIP int
	IPAdmitRate   float64
	IPAdmitBurst  int
	IPLimitExempt []netip.Prefix
	// OriginPatterns: browser origins (host patterns, as coder/websocket's
	// AcceptOptions.OriginPatterns) allowed besides the proxy's own host. Requests
	// without an Origin header (native devices) are not affected. Default none.
	OriginPatterns []string
	// TrustDeviceIDs gives a device without a token the notes of the device
	// inbox named by its ?device= id. Off by default: anyone can claim any id,
	// so only a deployment whose devices cannot be impersonated (the dev server,
	// a closed network) turns it on. Members' inboxes always need a token's mid.
	TrustDeviceIDs bool
	// MaxPendingNotes bounds the notes queued on one connection; past half of it
	// low pushes are shed, past it the oldest low note makes room, and a device
	// with only higher ones queued is closed (it resumes from its cursor). At
	// least 2*InboxLen+16, so a resume's backlog always fits. Default 512.
	MaxPendingNotes int
	// InboxLen is the most notes one resume reads per inbox (as many as an inbox
	// keeps). Default engine.DefaultInboxLen.
	InboxLen int
	// MaxResumes bounds backlog reads in flight per proxy; an inbox op past it
	// gets unavailable (retry). Default 256. ResumeBudget caps inbox ops per
	// connection per minute (rate_limited past it). Default 10.
	MaxResumes   int
	ResumeBudget int
	// Low pushes are shed while more than ShedNoteBytes of notes wait on
	// connections, or more than ShedWaiting connections wait for a writer.
	// Defaults 256 MiB, 10000.
	ShedNoteBytes int64
	ShedWaiting   int
	// PublicURL is where devices reach this proxy (ws://host:port/v1/ws, or
	// wss://...), published with its load so draining proxies can direct
	// devices here. Empty: never a drain target.
	PublicURL string
	// DrainTargets are the host patterns (path.Match, e.g. "*.px.example.com")
	// of proxies a directed drain may send devices to; a published target
	// outside them (or ws from a wss proxy) is dropped, whoever wrote it into
	// the engine. Empty: any host, never wss -> ws.
	DrainTargets []string
	// PacedRate is how many devices a second this proxy releases a paced
	// change to (halved while the prefetch tier sheds normal work, a fifth
	// while it sheds critical work). Default 1000 (0 takes the default; a
	// change that should go to every device at once is sent unpaced).
	PacedRate int
	// MaxClockSkew: armed stages fire from this proxy's clock only while it is
	// within this of the engine's (measured every ~30 s); past it the proxy
	// waits for the central fire. Default 250ms.
	MaxClockSkew time.Duration
	// Registerer for Prometheus metrics. Default: a fresh registry (see Server.Registry).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now and Rand are injected for tests. Defaults time.Now and math/rand/v2.
	Now  func() time.Time
	Rand *rand.Rand
}

// DefaultConfig returns the proxy's documented defaults (the flags of
// `stagecast proxy` take theirs from it). New fills each zero field of its
// Config from it (package defaults), then validates.
func DefaultConfig() Config {
	h, _ := os.Hostname()
	return Config{
		ID:                 fmt.Sprintf("%s-%d", h, os.Getpid()),
		MaxConnections:     200000,
		MaxSubscriptions:   16,
		MaxFramesPerSecond: 20,
		AdmitRate:          2000,
		AdmitBurst:         2000,
		Writers:            max(8, 4*runtimeProcs()),
		MaxWriters:         1024,
		HistoryLen:         64,
		StatsVersions:      16,
		MaxEvents:          10000,
		SubscribeBudget:    60,
		ErrorBudget:        30,
		MaxPendingNotes:    512,
		PacedRate:          1000,
		InboxLen:           engine.DefaultInboxLen,
		MaxResumes:         256,
		ResumeBudget:       10,
		ShedWaiting:        10000,
		ShedNoteBytes:      256 << 20,
		MaxConnsPerIP:      1000,
		IPAdmitRate:        20,
		IPAdmitBurst:       100,
		LookupRate:         1000,
		ExistsTTL:          30 * time.Second,
		MissingTTL:         5 * time.Second,
		ReadLimit:          4096,
		WriteTimeout:       5 * time.Second,
		PingInterval:       25 * time.Second,
		PongTimeout:        10 * time.Second,
		RetryAfter:         5 * time.Second,
		DrainWindow:        30 * time.Second,
		ReconnectJitter:    2 * time.Second,
		ReportInterval:     time.Second,
		EngineLostAfter:    3 * time.Second,
		ReconcileInterval:  30 * time.Second,
		TopicLinger:        60 * time.Second,
		MaxClockSkew:       250 * time.Millisecond,
		Logger:             slog.Default(),
		Now:                time.Now,
	}
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing.
// Negative values are errors, except for the per-IP limits, where a negative
// value turns the limit off.
func (c *Config) Validate() error {
	var errs []error
	for name, v := range map[string]int{"MaxConnections": c.MaxConnections, "MaxSubscriptions": c.MaxSubscriptions,
		"MaxFramesPerSecond": c.MaxFramesPerSecond, "AdmitBurst": c.AdmitBurst, "Writers": c.Writers,
		"MaxWriters": c.MaxWriters, "HistoryLen": c.HistoryLen, "StatsVersions": c.StatsVersions,
		"MaxEvents": c.MaxEvents, "SubscribeBudget": c.SubscribeBudget, "ErrorBudget": c.ErrorBudget,
		"MaxPendingNotes": c.MaxPendingNotes, "InboxLen": c.InboxLen, "MaxResumes": c.MaxResumes,
		"ResumeBudget": c.ResumeBudget, "ShedWaiting": c.ShedWaiting} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("proxy config: %s = %d must be > 0", name, v))
		}
	}
	for name, v := range map[string]time.Duration{"WriteTimeout": c.WriteTimeout, "PingInterval": c.PingInterval,
		"PongTimeout": c.PongTimeout, "RetryAfter": c.RetryAfter, "DrainWindow": c.DrainWindow,
		"ReconnectJitter": c.ReconnectJitter, "ReportInterval": c.ReportInterval, "EngineLostAfter": c.EngineLostAfter,
		"ReconcileInterval": c.ReconcileInterval, "TopicLinger": c.TopicLinger,
		"ExistsTTL": c.ExistsTTL, "MissingTTL": c.MissingTTL} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("proxy config: %s = %v must be > 0", name, v))
		}
	}
	if c.MaxPendingNotes < 2*c.InboxLen+16 {
		errs = append(errs, fmt.Errorf("proxy config: MaxPendingNotes = %d must be >= 2*InboxLen+16 = %d (a resume's backlog must fit)", c.MaxPendingNotes, 2*c.InboxLen+16))
	}
	if c.ShedNoteBytes < 0 {
		errs = append(errs, fmt.Errorf("proxy config: ShedNoteBytes = %d must be > 0", c.ShedNoteBytes))
	}
	if c.ReadLimit < 64 {
		errs = append(errs, fmt.Errorf("proxy config: ReadLimit = %d must be >= 64", c.ReadLimit))
	}
	if c.RequireToken && c.Tokens == nil {
		errs = append(errs, errors.New("proxy config: RequireToken needs device keys (Tokens)"))
	}
	if c.LookupRate < 0 {
		errs = append(errs, fmt.Errorf("proxy config: LookupRate = %v must be > 0", c.LookupRate))
	}
	if c.AdmitRate < 0 {
		errs = append(errs, fmt.Errorf("proxy config: AdmitRate = %v must be > 0", c.AdmitRate))
	}
	if c.MaxWriters < c.Writers {
		errs = append(errs, fmt.Errorf("proxy config: MaxWriters (%d) < Writers (%d)", c.MaxWriters, c.Writers))
	}
	if !validID(c.ID) {
		errs = append(errs, fmt.Errorf("proxy config: ID %q must be 1-128 printable characters without spaces", c.ID))
	}
	if c.Logger == nil || c.Now == nil || c.Rand == nil {
		errs = append(errs, errors.New("proxy config: Logger, Now and Rand must be set (New fills them)"))
	}
	return errors.Join(errs...)
}

func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r > '~' {
			return false
		}
	}
	return true
}
