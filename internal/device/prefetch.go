package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// PrefetchQuery is the contract's prefetch query.
const PrefetchQuery = `query Prefetch($event: ID!, $segment: String) {
  liveEvent(id: $event) {
    id
    current { key v ts }
    stages(segment: $segment) { key payload }
    ttlSeconds
    refreshAfterSeconds
  }
}`

// prefetchQueryDigests is the contract's query plus each key's payload digest
// (an extension field), which stage frames carry as "d".
const prefetchQueryDigests = `query Prefetch($event: ID!, $segment: String) {
  liveEvent(id: $event) {
    id
    current { key v ts }
    stages(segment: $segment) { key payload digest }
    ttlSeconds
    refreshAfterSeconds
  }
}`

// PrefetchConfig configures a device's prefetcher. Zero values are defaults.
type PrefetchConfig struct {
	URL     string // the prefetch API's /graphql. Required.
	Event   string
	Segment string
	// Critical marks the fetches as live-event prefetch (X-Stagecast-Priority);
	// the server believes it only with a valid Token (or from a trusted network).
	Critical bool
	// Token is the device token, sent as Authorization: Bearer.
	Token      string
	HTTPClient *http.Client
	// MissDelayMax: a stage key missing from the map is fetched once after
	// U(0, MissDelayMax), so a broadcast of an unknown key does not make every
	// device fetch at the same instant. Default 5s.
	MissDelayMax time.Duration
	// DeviceID picks the device's refetch slot: a stage frame whose digest
	// differs from the payload held (or names a key not held) makes the device
	// refetch after wire.RefetchDelay(DeviceID, RefetchWindow, RefetchSlots), a
	// slot fixed per device and uniform over devices. Defaults 30s, 300 slots.
	DeviceID      string
	RefetchWindow time.Duration
	RefetchSlots  int
	// BackoffBase, BackoffCap for failed fetches (full jitter). Defaults 1s, 60s.
	BackoffBase, BackoffCap time.Duration
	Rand                    *rand.Rand
	Sleep                   func(ctx context.Context, d time.Duration) error
	// OnFetch is called after each fetch (loadgen counts them).
	OnFetch func(err error, took time.Duration)
}

// Prefetcher holds a device's copy of an event's stage map.
type Prefetcher struct {
	cfg PrefetchConfig

	mu       sync.Mutex
	payloads map[string]json.RawMessage
	digests  map[string]string
	refresh  time.Duration
	randMu   sync.Mutex

	missPending atomic.Bool
	Fetches     atomic.Int64
}

// PrefetchError is a failed fetch; RetryAfter is the server's hint, if any.
type PrefetchError struct {
	Status     int
	Code       string
	RetryAfter time.Duration
	Err        error
}

func (e *PrefetchError) Error() string {
	return fmt.Sprintf("prefetch: HTTP %d %s: %v", e.Status, e.Code, e.Err)
}

// NewPrefetcher validates cfg.
func NewPrefetcher(cfg PrefetchConfig) (*Prefetcher, error) {
	if cfg.URL == "" || cfg.Event == "" {
		return nil, errors.New("prefetch: URL and Event are required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.MissDelayMax <= 0 {
		cfg.MissDelayMax = 5 * time.Second
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = time.Second
	}
	if cfg.RefetchWindow <= 0 {
		cfg.RefetchWindow = 30 * time.Second
	}
	if cfg.RefetchSlots <= 0 {
		cfg.RefetchSlots = 300
	}
	if cfg.BackoffCap <= 0 {
		cfg.BackoffCap = time.Minute
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if cfg.Sleep == nil {
		cfg.Sleep = Sleep
	}
	return &Prefetcher{cfg: cfg, payloads: map[string]json.RawMessage{}, digests: map[string]string{}}, nil
}

func (p *Prefetcher) uniform() float64 {
	p.randMu.Lock()
	defer p.randMu.Unlock()
	return p.cfg.Rand.Float64()
}

type prefetchResponse struct {
	Data struct {
		LiveEvent *struct {
			Stages []struct {
				Key     string          `json:"key"`
				Payload json.RawMessage `json:"payload"`
				Digest  string          `json:"digest"`
			} `json:"stages"`
			TTLSeconds          int `json:"ttlSeconds"`
			RefreshAfterSeconds int `json:"refreshAfterSeconds"`
		} `json:"liveEvent"`
	} `json:"data"`
	Errors []struct {
		Message    string `json:"message"`
		Extensions struct {
			Code string `json:"code"`
		} `json:"extensions"`
	} `json:"errors"`
}

// Fetch prefetches once and replaces the held map. It returns the server's
// refresh hint.
func (p *Prefetcher) Fetch(ctx context.Context) (refreshAfter time.Duration, err error) {
	start := time.Now()
	defer func() {
		p.Fetches.Add(1)
		if p.cfg.OnFetch != nil {
			p.cfg.OnFetch(err, time.Since(start))
		}
	}()
	vars := map[string]any{"event": p.cfg.Event}
	if p.cfg.Segment != "" {
		vars["segment"] = p.cfg.Segment
	}
	req, err := graphQLRequest(ctx, p.cfg.URL, p.cfg.Token,
		map[string]any{"query": prefetchQueryDigests, "operationName": "Prefetch", "variables": vars})
	if err != nil {
		return 0, err
	}
	if p.cfg.Critical {
		req.Header.Set("X-Stagecast-Priority", "critical")
	}
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, &PrefetchError{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, &PrefetchError{Status: resp.StatusCode, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return 0, &PrefetchError{Status: resp.StatusCode, Code: "http", RetryAfter: time.Duration(ra) * time.Second, Err: errors.New(string(bytes.TrimSpace(b)))}
	}
	var out prefetchResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return 0, &PrefetchError{Status: resp.StatusCode, Err: err}
	}
	if le := out.Data.LiveEvent; le != nil {
		m := make(map[string]json.RawMessage, len(le.Stages))
		dg := make(map[string]string, len(le.Stages))
		for _, s := range le.Stages {
			m[s.Key] = s.Payload
			dg[s.Key] = s.Digest
		}
		refresh := time.Duration(le.RefreshAfterSeconds) * time.Second
		p.mu.Lock()
		p.payloads, p.digests, p.refresh = m, dg, refresh
		p.mu.Unlock()
		return refresh, nil
	}
	if len(out.Errors) > 0 {
		return 0, &PrefetchError{Status: resp.StatusCode, Code: out.Errors[0].Extensions.Code, Err: errors.New(out.Errors[0].Message)}
	}
	return 0, &PrefetchError{Status: resp.StatusCode, Err: errors.New("empty response")}
}

// Run keeps the map fresh until ctx ends: it fetches, then sleeps the server's
// refresh hint; failed fetches back off with full jitter (or the server's
// Retry-After when longer).
func (p *Prefetcher) Run(ctx context.Context) error {
	attempt := 0
	for {
		refresh, err := p.Fetch(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := refresh
		if err != nil {
			d = Backoff(attempt, p.cfg.BackoffBase, p.cfg.BackoffCap, p.uniform())
			var pe *PrefetchError
			if errors.As(err, &pe) && pe.RetryAfter > d {
				d = pe.RetryAfter
			}
			attempt++
		} else {
			attempt = 0
		}
		if err := p.cfg.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Lookup returns the payload held for stage key.
func (p *Prefetcher) Lookup(key string) (json.RawMessage, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.payloads[key]
	return v, ok
}

// Len is how many stages the device holds.
func (p *Prefetcher) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.payloads)
}

// OnStage is what a device does at a broadcast: look the key up locally. When
// the key is missing it fetches once, after U(0, MissDelayMax), in the
// background; further misses while that fetch is pending add nothing.
func (p *Prefetcher) OnStage(ctx context.Context, key string) (json.RawMessage, bool) {
	v, ok, _ := p.OnStageDigest(ctx, key, "")
	return v, ok
}

// OnStageDigest is OnStage for a frame that carries the payload digest (its
// "d"): when the held payload's digest differs, or the key is missing, the
// device refetches once in its own slot, wire.RefetchDelay(DeviceID, ...),
// not at random, and keeps showing what it holds meanwhile. It returns the
// held payload, whether there is one, and the refetch delay (-1: none).
func (p *Prefetcher) OnStageDigest(ctx context.Context, key, digest string) (json.RawMessage, bool, time.Duration) {
	p.mu.Lock()
	v, ok := p.payloads[key]
	held := p.digests[key]
	p.mu.Unlock()
	stale := digest != "" && held != digest
	if ok && !stale {
		return v, true, -1
	}
	var d time.Duration
	if digest != "" {
		d = wire.RefetchDelay(p.cfg.DeviceID, p.cfg.RefetchWindow, p.cfg.RefetchSlots)
	} else {
		d = time.Duration(p.uniform() * float64(p.cfg.MissDelayMax))
	}
	if !p.missPending.CompareAndSwap(false, true) {
		return v, ok, d // a refetch is already on its way
	}
	go func() {
		defer p.missPending.Store(false)
		if p.cfg.Sleep(ctx, d) == nil {
			_, _ = p.Fetch(ctx)
		}
	}()
	return v, ok, d
}

// Digest returns the digest of the held payloads of key ("" when none).
func (p *Prefetcher) Digest(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.digests[key]
}

// Keys returns the stage keys held.
func (p *Prefetcher) Keys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.payloads))
	for k := range p.payloads {
		out = append(out, k)
	}
	return out
}

// graphQLRequest builds a POST of payload to a prefetch server's /graphql,
// with the device token when there is one.
func graphQLRequest(ctx context.Context, url, token string, payload any) (*http.Request, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req, nil
}

// Config returns p's configuration with its defaults filled in.
func (p *Prefetcher) Config() PrefetchConfig { return p.cfg }
