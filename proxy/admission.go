package proxy

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/stagecast/stagecast/internal/devicetoken"
)

// TokenVerifier checks a device token (devicetoken.Verifier satisfies it).
type TokenVerifier interface {
	Verify(token string) (devicetoken.Claims, error)
}

var _ TokenVerifier = (*devicetoken.Verifier)(nil)

// platformLabels is the fixed set of platform label values on metrics; any other
// platform a device names counts as "other", so devices cannot mint series.
var platformLabels = map[string]bool{"tv": true, "mobile": true, "web": true, "console": true, "unknown": true}

// platformNames are the platform labels by index (per-platform delivery
// counts are arrays of this fixed size: no allocation, no unbounded keys).
var platformNames = [...]string{"tv", "mobile", "web", "console", "unknown", "other"}

const numPlatforms = len(platformNames)

// platformIndex is label's index in platformNames.
func platformIndex(label string) uint8 {
	for i, n := range platformNames {
		if n == label {
			return uint8(i)
		}
	}
	return uint8(numPlatforms - 1)
}

func platformLabel(p string) string {
	if platformLabels[p] {
		return p
	}
	return "other"
}

// bearer returns the device token of an upgrade request: the Authorization
// header, else the token query parameter (browsers cannot set headers).
func bearer(r *http.Request) string {
	if tok, ok := devicetoken.FromHeader(r); ok {
		return tok
	}
	return r.URL.Query().Get("token")
}

// ipLimits holds the per-source-IP admission limiters. Counts of open
// connections per IP live in Server.perIP (under connsMu); limiters live in an
// LRU so an address scan cannot grow them without bound.
type ipLimits struct {
	exempt []netip.Prefix
	rate   rate.Limit
	burst  int
	lims   *lru.Cache[netip.Addr, *rate.Limiter]
}

// maxIPLimiters bounds the per-IP limiter table: 64k entries, about 6 MiB.
const maxIPLimiters = 1 << 16

func newIPLimits(cfg *Config) *ipLimits {
	l, _ := lru.New[netip.Addr, *rate.Limiter](maxIPLimiters)
	return &ipLimits{exempt: cfg.IPLimitExempt, rate: rate.Limit(cfg.IPAdmitRate), burst: cfg.IPAdmitBurst, lims: l}
}

func (l *ipLimits) exempted(ip netip.Addr) bool {
	for _, p := range l.exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// allow takes one admission from ip's bucket.
func (l *ipLimits) allow(ip netip.Addr) bool {
	if l.rate <= 0 {
		return true
	}
	lim, ok := l.lims.Get(ip)
	if !ok {
		lim = rate.NewLimiter(l.rate, l.burst)
		if prev, found, _ := l.lims.PeekOrAdd(ip, lim); found {
			lim = prev
		}
	}
	return lim.Allow()
}

// eventChecker answers "does this event exist?" for subscribes, from a local
// cache (positive ExistsTTL, negative MissingTTL), one engine lookup per event
// at a time (singleflight), and at most LookupRate uncached lookups per second
// per proxy, so a flood of made-up ids costs a bounded number of engine round
// trips whatever the number of connections.
type eventChecker struct {
	eng     Engine
	now     func() time.Time
	posTTL  time.Duration
	negTTL  time.Duration
	cache   *lru.Cache[string, existence]
	flights singleflight.Group
	lookups *rate.Limiter
	timeout time.Duration
}

type existence struct {
	exists bool
	until  time.Time
}

// existsResult is what a subscribe learns about an event.
type existsResult int

const (
	eventExists existsResult = iota
	eventMissing
	eventUnchecked // lookup budget spent or engine failing: retry later
)

// maxExistenceEntries bounds the existence cache: 16k ids of at most 128 bytes
// (about 4 MiB at most). LookupRate bounds how fast it can churn.
const maxExistenceEntries = 1 << 14

func newEventChecker(cfg *Config, eng Engine) *eventChecker {
	c, _ := lru.New[string, existence](maxExistenceEntries)
	return &eventChecker{eng: eng, now: cfg.Now, posTTL: cfg.ExistsTTL, negTTL: cfg.MissingTTL, cache: c,
		lookups: rate.NewLimiter(rate.Limit(cfg.LookupRate), max(1, int(cfg.LookupRate))), timeout: 2 * time.Second}
}

// cached answers from the cache alone; ok is false when a lookup is needed.
func (ec *eventChecker) cached(event string) (existsResult, bool) {
	ent, ok := ec.cache.Get(event)
	if !ok || !ec.now().Before(ent.until) {
		return eventUnchecked, false
	}
	return boolResult(ent.exists), true
}

// check returns whether event exists. It may block on one engine round trip
// (bounded by a 2 s timeout); call it off the frame handlers.
func (ec *eventChecker) check(ctx context.Context, event string) existsResult {
	now := ec.now()
	ent, cached := ec.cache.Get(event)
	if cached && now.Before(ent.until) {
		return boolResult(ent.exists)
	}
	if !ec.lookups.Allow() {
		if cached && ent.exists {
			return eventExists // stale but known: devices of a real event are never refused
		}
		return eventUnchecked
	}
	v, err, _ := ec.flights.Do(event, func() (any, error) {
		lctx, cancel := context.WithTimeout(ctx, ec.timeout)
		defer cancel()
		ok, err := ec.eng.Exists(lctx, event)
		if err != nil {
			return false, err
		}
		ttl := ec.negTTL
		if ok {
			ttl = ec.posTTL
		}
		ec.cache.Add(event, existence{exists: ok, until: ec.now().Add(ttl)})
		return ok, nil
	})
	if err != nil {
		if cached && ent.exists {
			return eventExists
		}
		return eventUnchecked
	}
	return boolResult(v.(bool))
}

func boolResult(b bool) existsResult {
	if b {
		return eventExists
	}
	return eventMissing
}
