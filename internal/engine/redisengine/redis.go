// Package redisengine is stagecast's distributed engine on Redis (standalone or
// Cluster), built on github.com/redis/rueidis.
//
// Layout per event E (every key and channel carries the {E} hash tag, so an
// event's data and channel live on one Redis Cluster shard):
//
//	sc:{E}:log           stream of recent stage changes, ID "<v>-0", exact MAXLEN;
//	                     its newest entry is the current stage and version
//	sc:{E}:idem:<key>    string, "<stage key>\n<stage JSON>", expires
//	sc:{E}:stage         sharded pub/sub channel (SPUBLISH/SSUBSCRIBE)
//	sc:{E}:dlv:<v>       hash  proxy -> delivery counters JSON, expires
//	sc:{E}:dev           hash  proxy -> {"devices":N,"at":ms}, expires
//
// A stage change is one Lua script: idempotency check, next version, log entry,
// publish. The version is max(newest logged + 1, Redis TIME in microseconds,
// the caller's floor): it rises even when Redis lost the newest entries (an
// asynchronous replica promoted, a restart without AOF, keys expired), because
// the clock has moved on since they were written (see docs/architecture.md).
// The only write that can fail on its input (XADD) comes first, so a failure
// leaves nothing half written.
//
// Concurrency: an *Engine is safe for concurrent use. Subscribe handlers run on
// rueidis' pipeline goroutine and must not block.
package redisengine

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Config configures the Redis engine. Zero values are the defaults.
type Config struct {
	// Addrs are Redis addresses (host:port). Several, or one node of a cluster:
	// rueidis discovers cluster topology by itself. Required.
	Addrs []string
	// Username and Password for AUTH (an ACL user; Password alone authenticates
	// the default user), if any.
	Username string
	Password string
	// TLS, when set, encrypts every connection to Redis (rueidis dials with it).
	TLS *tls.Config
	// LogLen is how many recent changes each event keeps. Default engine.DefaultLogLen.
	LogLen int
	// InboxLen is how many notes each inbox keeps. Default engine.DefaultInboxLen.
	InboxLen int
	// IdempotencyTTL, default engine.DefaultIdempotencyTTL.
	IdempotencyTTL time.Duration
	// ReportTTL is how long delivery aggregates live, default engine.DefaultReportTTL.
	ReportTTL time.Duration
	// EventTTL is how long an idle event's state and log live after its last
	// change. Default 7 days.
	EventTTL time.Duration
	// OpTimeout bounds each command when the caller's ctx has no deadline. Default 2s.
	OpTimeout time.Duration
	// ResubscribeMax caps the jittered backoff between subscription attempts. Default 5s.
	ResubscribeMax time.Duration
	// WaitReplicas, when > 0, makes every stage change wait (WAIT) until that
	// many replicas acknowledged it, for at most WaitTimeout (default 100ms;
	// keep it well under the broadcaster's engine timeout, 2 s);
	// fewer is an error (ErrNotDurable) after the change was made: retry with the
	// same Idempotency-Key. Default 0: Redis's asynchronous replication.
	WaitReplicas int
	WaitTimeout  time.Duration
	// DialTimeout bounds a connection attempt (a dead node must not hold a
	// request for long). Default 1s.
	DialTimeout time.Duration
	// TopologyRefresh is how often a cluster client re-reads the topology, so a
	// promoted replica is found within it even without a redirect. Default 500ms.
	TopologyRefresh time.Duration
	// ConnTimeout bounds how long a connection may go without an answer (a
	// command's reply or the client's periodic PING) before it is closed and
	// dialed again: how soon a silent partition (packets dropped, no reset) is
	// noticed. Default 3s.
	ConnTimeout time.Duration
	// AddrMap: when Redis names a node at a key (host:port, as CLUSTER SLOTS
	// reports it), dial the value instead: Redis behind NAT, port forwards or
	// tunnels, and the local fleet's fault-injection links. Default none.
	AddrMap map[string]string
	// ClientCache turns on Redis client-side caching (RESP3 tracking) for stage
	// maps and event windows: reads come from local memory until Redis says the
	// key changed. CacheTTL bounds how long a cached value is trusted. Default off; 1m.
	ClientCache bool
	CacheTTL    time.Duration
	Logger      *slog.Logger
	// Now is the clock for pruning proxies that stopped reporting. Default time.Now.
	Now func() time.Time
}

// DefaultConfig returns the Redis engine's documented defaults (no address:
// that is the caller's). New fills each zero field of its Config from it
// (package defaults), then validates.
func DefaultConfig() Config {
	return Config{
		LogLen:          engine.DefaultLogLen,
		InboxLen:        engine.DefaultInboxLen,
		IdempotencyTTL:  engine.DefaultIdempotencyTTL,
		ReportTTL:       engine.DefaultReportTTL,
		EventTTL:        7 * 24 * time.Hour,
		OpTimeout:       2 * time.Second,
		ResubscribeMax:  5 * time.Second,
		WaitTimeout:     100 * time.Millisecond,
		DialTimeout:     time.Second,
		TopologyRefresh: 500 * time.Millisecond,
		ConnTimeout:     3 * time.Second,
		CacheTTL:        time.Minute,
		Logger:          slog.Default(),
		Now:             time.Now,
	}
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing.
func (c *Config) Validate() error {
	if len(c.Addrs) == 0 {
		return errors.New("redis engine: no address (set --redis)")
	}
	for _, a := range c.Addrs {
		if !strings.Contains(a, ":") {
			return fmt.Errorf("redis engine: address %q is not host:port", a)
		}
	}
	if c.LogLen <= 0 || c.InboxLen <= 0 {
		return fmt.Errorf("redis engine: LogLen %d and InboxLen %d must be > 0", c.LogLen, c.InboxLen)
	}
	for name, d := range map[string]time.Duration{"IdempotencyTTL": c.IdempotencyTTL, "ReportTTL": c.ReportTTL, "EventTTL": c.EventTTL,
		"OpTimeout": c.OpTimeout, "ResubscribeMax": c.ResubscribeMax, "WaitTimeout": c.WaitTimeout, "DialTimeout": c.DialTimeout,
		"TopologyRefresh": c.TopologyRefresh, "CacheTTL": c.CacheTTL, "ConnTimeout": c.ConnTimeout} {
		if d <= 0 {
			return fmt.Errorf("redis engine: %s = %v must be > 0", name, d)
		}
	}
	for from, to := range c.AddrMap {
		if _, _, err := net.SplitHostPort(from); err != nil {
			return fmt.Errorf("redis engine: AddrMap key %q is not host:port", from)
		}
		if _, _, err := net.SplitHostPort(to); err != nil {
			return fmt.Errorf("redis engine: AddrMap[%q] = %q is not host:port", from, to)
		}
	}
	if c.WaitReplicas < 0 {
		return errors.New("redis engine: WaitReplicas must be >= 0")
	}
	if c.Logger == nil || c.Now == nil {
		return errors.New("redis engine: Logger and Now must be set (New fills them)")
	}
	return nil
}

// Engine is the Redis engine.
type Engine struct {
	cfg    Config
	client rueidis.Client
	fast   rueidis.Client // stage changes and high/critical notes
	index  *eventIndexer
	stop   context.CancelFunc
}

// New connects to Redis. It fails fast when no node answers.
func New(cfg Config) (*Engine, error) {
	defaults.Fill(&cfg, DefaultConfig())
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opt := rueidis.ClientOption{
		Dialer:           net.Dialer{Timeout: cfg.DialTimeout},
		ConnWriteTimeout: cfg.ConnTimeout,
		ClusterOption:    rueidis.ClusterOption{ShardsRefreshInterval: cfg.TopologyRefresh},
		InitAddress:      cfg.Addrs,
		Username:         cfg.Username,
		Password:         cfg.Password,
		TLSConfig:        cfg.TLS,
		DisableCache:     !cfg.ClientCache,
		// Sharded pub/sub works on standalone Redis 7 too, so one code path
		// serves both; rueidis routes by slot on a cluster.
	}
	if len(cfg.AddrMap) > 0 {
		m := maps.Clone(cfg.AddrMap)
		opt.DialCtxFn = func(ctx context.Context, dst string, d *net.Dialer, tc *tls.Config) (net.Conn, error) {
			if to, ok := m[dst]; ok {
				if tc != nil && tc.ServerName == "" {
					// Verify the certificate of the node Redis named, not the relay's.
					tc = tc.Clone()
					tc.ServerName, _, _ = net.SplitHostPort(dst)
				}
				dst = to
			}
			if tc != nil {
				td := tls.Dialer{NetDialer: d, Config: tc}
				return td.DialContext(ctx, "tcp", dst)
			}
			return d.DialContext(ctx, "tcp", dst)
		}
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("redis engine: connect %v: %w", cfg.Addrs, err)
	}
	// Stage changes and high/critical notes ride their own connections, so they
	// never queue behind a deep pipeline of low-priority notes.
	opt.DisableCache = true
	fast, err := rueidis.NewClient(opt)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("redis engine: connect %v: %w", cfg.Addrs, err)
	}
	e := &Engine{cfg: cfg, client: client, fast: fast}
	ctx, stop := context.WithCancel(context.Background())
	e.stop = stop
	e.index = newEventIndexer(e)
	go e.index.run(ctx)
	return e, nil
}

// Close stops the event indexer and closes the Redis clients.
func (e *Engine) Close() { e.stop(); <-e.index.done; e.client.Close(); e.fast.Close() }

// Client exposes the underlying client (for prefetch's client-side cache).
func (e *Engine) Client() rueidis.Client { return e.client }

func key(event, suffix string) string { return "sc:{" + event + "}:" + suffix }

func (e *Engine) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, e.cfg.OpTimeout)
}

// stagePrefix marshals a stage without its version and closing brace; the script
// appends ,"v":N}.
func stagePrefix(req engine.SetRequest) (string, error) {
	type noV struct {
		Event    string       `json:"event"`
		Key      string       `json:"key"`
		TS       int64        `json:"ts"`
		Target   *wire.Target `json:"target,omitempty"`
		Priority string       `json:"priority,omitempty"`
		Paced    bool         `json:"paced,omitempty"`
	}
	t := req.Target
	if t.IsZero() {
		t = nil
	}
	prio := ""
	if req.Critical {
		prio = wire.PriorityCritical.String()
	}
	b, err := json.Marshal(noV{Event: req.Event, Key: req.Key, TS: req.TS, Target: t, Priority: prio, Paced: req.Paced})
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-1]), nil
}

// SetStage runs the stage-change script.
func (e *Engine) SetStage(ctx context.Context, req engine.SetRequest) (engine.SetResult, error) {
	prefix, err := stagePrefix(req)
	if err != nil {
		return engine.SetResult{}, fmt.Errorf("set stage: %w", err)
	}
	useIdem, idemKey := "0", key(req.Event, "idem:")
	if req.IdempotencyKey != "" {
		useIdem, idemKey = "1", key(req.Event, "idem:"+req.IdempotencyKey)
	}
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); !ok {
		// WAIT comes on top of the script: its timeout is added to the op's.
		ctx, cancel = context.WithTimeout(ctx, e.cfg.OpTimeout+e.waitTimeout())
	} else {
		cancel = func() {}
	}
	defer cancel()
	keys := []string{key(req.Event, "log"), idemKey, key(req.Event, "stage"), key(req.Event, "dig")}
	args := []string{prefix, strconv.Itoa(e.cfg.LogLen), strconv.FormatUint(req.MinVersion, 10),
		strconv.FormatInt(int64(cmp.Or(req.KeyTTL, e.cfg.IdempotencyTTL)/time.Second), 10),
		strconv.FormatInt(e.cfg.EventTTL.Milliseconds(), 10), useIdem, req.Key}
	var res []rueidis.RedisMessage
	if e.cfg.WaitReplicas > 0 {
		res, err = e.setDurable(ctx, keys, args)
	} else {
		res, err = setLua.Exec(ctx, e.fast, keys, args).ToArray()
	}
	if err != nil {
		return engine.SetResult{}, fmt.Errorf("set stage %s: %w", req.Event, err)
	}
	if len(res) != 2 {
		return engine.SetResult{}, fmt.Errorf("set stage %s: script returned %d values", req.Event, len(res))
	}
	replayed, _ := res[0].AsInt64()
	raw, err := res[1].ToString()
	if err != nil {
		return engine.SetResult{}, fmt.Errorf("set stage %s: %w", req.Event, err)
	}
	if replayed == 1 {
		reqKey, stored, _ := strings.Cut(raw, "\n")
		st, err := wire.UnmarshalStage([]byte(stored))
		if err != nil {
			return engine.SetResult{}, fmt.Errorf("set stage %s: stored reply: %w", req.Event, err)
		}
		if reqKey != req.Key {
			return engine.SetResult{Stage: st}, engine.ErrIdempotencyConflict
		}
		return engine.SetResult{Stage: st, Replayed: true}, nil
	}
	st, err := wire.UnmarshalStage([]byte(raw))
	if err != nil {
		return engine.SetResult{}, fmt.Errorf("set stage %s: %w", req.Event, err)
	}
	e.touch(ctx, req.Event)
	return engine.SetResult{Stage: st}, nil
}

// waitTimeout is how long a stage change may wait for replicas (0 without WAIT).
func (e *Engine) waitTimeout() time.Duration {
	if e.cfg.WaitReplicas > 0 {
		return e.cfg.WaitTimeout
	}
	return 0
}

// setDurable runs the stage-change script and WAIT on one dedicated connection
// (WAIT counts the replicas that acknowledged this connection's writes).
func (e *Engine) setDurable(ctx context.Context, keys, args []string) ([]rueidis.RedisMessage, error) {
	var res []rueidis.RedisMessage
	err := e.fast.Dedicated(func(dc rueidis.DedicatedClient) error {
		var err error
		res, err = dc.Do(ctx, dc.B().Eval().Script(setSrc).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()).ToArray()
		if err != nil {
			return err
		}
		// A replay too: the script rewrote the stored reply, so WAIT proves
		// the original change is on the replicas, not only that this
		// connection wrote nothing new.
		return e.waitReplicas(ctx, dc)
	})
	return res, err
}

// waitReplicas runs WAIT on dc: the connection's writes must reach
// WaitReplicas replicas within WaitTimeout, else ErrNotDurable.
func (e *Engine) waitReplicas(ctx context.Context, dc rueidis.DedicatedClient) error {
	n, err := dc.Do(ctx, dc.B().Wait().Numreplicas(int64(e.cfg.WaitReplicas)).Timeout(e.cfg.WaitTimeout.Milliseconds()).Build()).AsInt64()
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	if n < int64(e.cfg.WaitReplicas) {
		return fmt.Errorf("%w: %d of %d replicas acknowledged within %v", engine.ErrNotDurable, n, e.cfg.WaitReplicas, e.cfg.WaitTimeout)
	}
	return nil
}

// Recent returns up to n of the event's most recent changes, oldest first. An
// entry that does not decode is skipped: the others are returned with a
// *engine.SkippedError (see engine.Usable).
func (e *Engine) Recent(ctx context.Context, event string, n int) ([]wire.Stage, error) {
	if n <= 0 {
		return nil, nil
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	entries, err := e.client.Do(ctx, e.client.B().Xrevrange().Key(key(event, "log")).End("+").Start("-").Count(int64(n)).Build()).AsXRange()
	if err != nil {
		return nil, fmt.Errorf("recent %s: %w", event, err)
	}
	out := make([]wire.Stage, 0, len(entries))
	var skipped *engine.SkippedError
	for i := len(entries) - 1; i >= 0; i-- {
		st, err := wire.UnmarshalStage([]byte(entries[i].FieldValues["s"]))
		if err == nil && st.Event != event {
			err = fmt.Errorf("entry of event %q in the log of %q", st.Event, event)
		}
		if err != nil {
			if skipped == nil {
				skipped = &engine.SkippedError{Event: event}
			}
			skipped.Add(entries[i].ID, err)
			continue
		}
		out = append(out, st)
	}
	if skipped != nil {
		return out, skipped
	}
	return out, nil
}

// Subscribe holds one sharded subscription to the event's channel until ctx
// ends, re-subscribing with jittered backoff whenever Redis drops it. Each time
// a (re)subscription lands it calls onSubscribed, so the caller re-reads what it
// may have missed while disconnected (pub/sub does not buffer).
func (e *Engine) Subscribe(ctx context.Context, event string, onStage func(wire.Stage), onSubscribed func()) error {
	ch := key(event, "stage")
	log := e.cfg.Logger.With("event", event, "channel", ch)
	hookCtx := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
		if s.Kind == "ssubscribe" && onSubscribed != nil {
			onSubscribed()
		}
	})
	e.resubscribe(ctx, log, func() error {
		return e.client.Receive(hookCtx, e.client.B().Ssubscribe().Channel(ch).Build(), func(m rueidis.PubSubMessage) {
			st, err := wire.UnmarshalStage([]byte(m.Message))
			if err != nil {
				log.Error("dropping malformed stage message", "err", err)
				return
			}
			onStage(st)
		})
	})
	return ctx.Err()
}

// resubscribe runs receive (one Receive call) until ctx ends: again after a nil
// return (an unsubscribe, e.g. a slot migration) or an error, with full-jitter
// backoff that starts over after a subscription that was up for a while.
func (e *Engine) resubscribe(ctx context.Context, log *slog.Logger, receive func() error) {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := receive()
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			attempt = 0 // it was up for a while: start backoff again from the base
		}
		// Full jitter: U(0, min(cap, 100ms*2^attempt)).
		d := time.Duration(rand.Int64N(int64(min(e.cfg.ResubscribeMax, 100*time.Millisecond<<min(attempt, 10))) + 1))
		log.Warn("subscription ended; resubscribing", "err", err, "attempt", attempt+1, "after", d.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

type presenceJSON struct {
	Devices int64 `json:"devices"`
	AtMS    int64 `json:"at"`
}

// PutDelivery writes one proxy's aggregates in one pipeline.
func (e *Engine) PutDelivery(ctx context.Context, r engine.DeliveryReport) error {
	if r.Proxy == "" {
		return errors.New("put delivery: empty proxy id")
	}
	ttl := e.cfg.ReportTTL.Milliseconds()
	cmds := make(rueidis.Commands, 0, len(r.Events)*4)
	for _, ed := range r.Events {
		p, _ := json.Marshal(presenceJSON{Devices: ed.Devices, AtMS: r.AtMS})
		dk := key(ed.Event, "dev")
		cmds = append(cmds,
			e.client.B().Hset().Key(dk).FieldValue().FieldValue(r.Proxy, string(p)).Build(),
			e.client.B().Pexpire().Key(dk).Milliseconds(ttl).Build())
		for _, vd := range ed.Versions {
			b, err := json.Marshal(vd)
			if err != nil {
				return fmt.Errorf("put delivery: %w", err)
			}
			vk := key(ed.Event, "dlv:"+strconv.FormatUint(vd.V, 10))
			cmds = append(cmds,
				e.client.B().Hset().Key(vk).FieldValue().FieldValue(r.Proxy, string(b)).Build(),
				e.client.B().Pexpire().Key(vk).Milliseconds(ttl).Build())
		}
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	for _, res := range e.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return fmt.Errorf("put delivery from %s: %w", r.Proxy, err)
		}
	}
	return nil
}

// Delivery returns every proxy's latest figures for event and version v.
func (e *Engine) Delivery(ctx context.Context, event string, v uint64) ([]engine.ProxyDelivery, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	res := e.client.DoMulti(ctx,
		e.client.B().Hgetall().Key(key(event, "dev")).Build(),
		e.client.B().Hgetall().Key(key(event, "dlv:"+strconv.FormatUint(v, 10))).Build())
	devs, err := res[0].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("delivery %s: %w", event, err)
	}
	vers, err := res[1].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("delivery %s v%d: %w", event, v, err)
	}
	out := make([]engine.ProxyDelivery, 0, len(devs))
	staleBefore := e.cfg.Now().Add(-engine.PresenceTTL).UnixMilli()
	var gone []string
	for proxy, raw := range devs {
		var p presenceJSON
		if err := json.Unmarshal([]byte(raw), &p); err != nil || p.AtMS < staleBefore {
			// A proxy that stopped reporting (or a corrupt field) is dropped from
			// the presence hash; its sends below still count.
			gone = append(gone, proxy)
			continue
		}
		pd := engine.ProxyDelivery{Proxy: proxy, AtMS: p.AtMS, Devices: p.Devices}
		if rv, ok := vers[proxy]; ok {
			_ = json.Unmarshal([]byte(rv), &pd.Version) // a corrupt field counts as no sends
		}
		out = append(out, pd)
	}
	for proxy, rv := range vers {
		if _, reported := devs[proxy]; reported && !slices.Contains(gone, proxy) {
			continue
		}
		pd := engine.ProxyDelivery{Proxy: proxy}
		if json.Unmarshal([]byte(rv), &pd.Version) == nil {
			out = append(out, pd)
		}
	}
	if len(gone) > 0 {
		_ = e.client.Do(ctx, e.client.B().Hdel().Key(key(event, "dev")).Field(gone...).Build()).Error()
	}
	return out, nil
}

// Exists reports whether the event has a stage or a stage map (one EXISTS on
// two keys of the event's slot: its log and its map).
func (e *Engine) Exists(ctx context.Context, event string) (bool, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	n, err := e.client.Do(ctx, e.client.B().Exists().Key(key(event, "log"), key(event, "map")).Build()).AsInt64()
	if err != nil {
		return false, fmt.Errorf("exists %s: %w", event, err)
	}
	return n > 0, nil
}

// Ping checks that Redis answers (readiness).
func (e *Engine) Ping(ctx context.Context) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	return e.client.Do(ctx, e.client.B().Ping().Build()).Error()
}

// PutStageMap replaces the event's stage map atomically and returns its version.
// raw must already be validated (wire.ParseStageMap).
func (e *Engine) PutStageMap(ctx context.Context, event string, raw []byte, updatedMS int64) (uint64, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	args := []string{string(raw), strconv.FormatInt(updatedMS, 10), strconv.FormatInt(e.cfg.EventTTL.Milliseconds(), 10)}
	if m, err := wire.ParseStageMap(raw); err == nil {
		for k, d := range m.Digests() {
			args = append(args, k, d)
		}
	}
	v, err := putMapLua.Exec(ctx, e.client, []string{key(event, "map"), key(event, "mapv"), key(event, "dig")}, args).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("put stage map %s: %w", event, err)
	}
	e.touch(ctx, event)
	return uint64(v), nil
}

// SetLive switches the event window on or off.
func (e *Engine) SetLive(ctx context.Context, event string, live bool) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	cmd := e.client.B().Del().Key(key(event, "live")).Build()
	if live {
		cmd = e.client.B().Set().Key(key(event, "live")).Value("1").PxMilliseconds(e.cfg.EventTTL.Milliseconds()).Build()
	}
	if err := e.client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("set live %s: %w", event, err)
	}
	return nil
}

// Snapshot reads the event's stage map, current stage and window in one round
// trip (map and window through the client-side cache when it is on). With the
// client-side cache, reads are eventually consistent: a change, even one made
// through this client, is seen once Redis's invalidation push arrives
// (typically well under a millisecond; CacheTTL bounds it if a push is lost).
func (e *Engine) Snapshot(ctx context.Context, event string) (engine.Snapshot, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	var mapRes, liveRes rueidis.RedisResult
	// The newest few entries: the newest that decodes is the current stage.
	logCmd := e.client.B().Xrevrange().Key(key(event, "log")).End("+").Start("-").Count(4).Build()
	if e.cfg.ClientCache {
		res := e.client.DoMultiCache(ctx,
			rueidis.CT(e.client.B().Get().Key(key(event, "map")).Cache(), e.cfg.CacheTTL),
			rueidis.CT(e.client.B().Get().Key(key(event, "live")).Cache(), e.cfg.CacheTTL))
		mapRes, liveRes = res[0], res[1]
	} else {
		res := e.client.DoMulti(ctx, e.client.B().Get().Key(key(event, "map")).Build(), e.client.B().Get().Key(key(event, "live")).Build())
		mapRes, liveRes = res[0], res[1]
	}
	logRes := e.client.Do(ctx, logCmd)
	var snap engine.Snapshot
	raw, err := mapRes.ToString()
	switch {
	case rueidis.IsRedisNil(err):
	case err != nil:
		return snap, fmt.Errorf("snapshot %s: map: %w", event, err)
	default:
		vs, rest, ok1 := strings.Cut(raw, "\n")
		us, body, ok2 := strings.Cut(rest, "\n")
		v, err1 := strconv.ParseUint(vs, 10, 64)
		u, err2 := strconv.ParseInt(us, 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil {
			return snap, fmt.Errorf("snapshot %s: malformed stored map", event)
		}
		snap.Map = &engine.StageMapRecord{Version: v, UpdatedMS: u, Raw: []byte(body)}
	}
	if err := liveRes.Error(); err != nil && !rueidis.IsRedisNil(err) {
		return snap, fmt.Errorf("snapshot %s: live: %w", event, err)
	} else if err == nil {
		snap.Live = true
	}
	entries, err := logRes.AsXRange()
	if err != nil {
		return snap, fmt.Errorf("snapshot %s: log: %w", event, err)
	}
	for _, ent := range entries {
		if st, err := wire.UnmarshalStage([]byte(ent.FieldValues["s"])); err == nil && st.Event == event {
			snap.Current = &st
			break
		}
	}
	return snap, nil
}
