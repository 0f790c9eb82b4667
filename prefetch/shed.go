package prefetch

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stagecast/stagecast/internal/defaults"
)

// Priority of a prefetch request.
type Priority int

// Priorities: live-event prefetch is critical; other server-driven refreshes are normal.
const (
	Normal Priority = iota
	Critical
)

func (p Priority) String() string {
	if p == Critical {
		return "critical"
	}
	return "normal"
}

// ShedConfig configures admission. Zero values are defaults.
type ShedConfig struct {
	// OnShed, when set, is called for every request shed, with its priority
	// and reason (the analytics stream); it must only count.
	OnShed func(priority, reason string)
	// MaxInFlight: above it even critical requests are shed. Default 2048.
	MaxInFlight int
	// NormalInFlight: above it normal requests are shed. Default MaxInFlight/4.
	NormalInFlight int
	// LatencyBudget: while the moving average of request latency is above it,
	// normal requests are shed. Default 200ms.
	LatencyBudget time.Duration
	// RetryAfter is the base of the jittered Retry-After of shed requests. Default 2s.
	RetryAfter time.Duration
	Now        func() time.Time
}

// DefaultShedConfig returns the shedder's documented defaults. NewShedder
// fills each zero field of its ShedConfig from it (package defaults;
// NormalInFlight from the MaxInFlight given), then validates.
func DefaultShedConfig() ShedConfig {
	return ShedConfig{MaxInFlight: 2048, NormalInFlight: 2048 / 4, LatencyBudget: 200 * time.Millisecond, RetryAfter: 2 * time.Second, Now: time.Now}
}

// Validate checks a filled ShedConfig and changes nothing.
func (c *ShedConfig) Validate() error {
	if c.MaxInFlight < 1 || c.NormalInFlight < 1 || c.NormalInFlight > c.MaxInFlight {
		return fmt.Errorf("shed config: need 1 <= NormalInFlight (%d) <= MaxInFlight (%d)", c.NormalInFlight, c.MaxInFlight)
	}
	if c.LatencyBudget <= 0 || c.RetryAfter <= 0 || c.Now == nil {
		return fmt.Errorf("shed config: LatencyBudget (%v) and RetryAfter (%v) must be > 0, Now set", c.LatencyBudget, c.RetryAfter)
	}
	return nil
}

// Shedder admits requests by priority: normal work is shed first (in-flight above
// NormalInFlight, or latency above budget), critical work only above MaxInFlight.
type Shedder struct {
	cfg ShedConfig

	mu       sync.Mutex
	inFlight int
	ewma     float64 // seconds; alpha 0.1 per completed request
	// when work of each priority was last shed (Level)
	lastNormalShed, lastCriticalShed time.Time

	shed     *prometheus.CounterVec
	admitted *prometheus.CounterVec
	inflight prometheus.Gauge
}

// NewShedder validates cfg.
func NewShedder(cfg ShedConfig, reg prometheus.Registerer) (*Shedder, error) {
	if cfg.NormalInFlight == 0 && cfg.MaxInFlight > 0 {
		cfg.NormalInFlight = max(1, cfg.MaxInFlight/4)
	}
	defaults.Fill(&cfg, DefaultShedConfig())
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Shedder{cfg: cfg,
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "shed_total",
			Help: "Prefetch requests shed (503), by priority and reason (inflight, latency)."}, []string{"priority", "reason"}),
		admitted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "admitted_total",
			Help: "Prefetch requests admitted, by priority."}, []string{"priority"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "prefetch", Name: "in_flight",
			Help: "Prefetch requests being served."}),
	}
	if reg != nil {
		reg.MustRegister(s.shed, s.admitted, s.inflight)
	}
	return s, nil
}

// Admit decides for one request. When ok, call done when the request ends.
// When not ok, reason says why ("inflight" or "latency").
func (s *Shedder) Admit(p Priority) (done func(), ok bool, reason string) {
	s.mu.Lock()
	switch {
	case s.inFlight >= s.cfg.MaxInFlight:
		reason = "inflight"
	case p == Normal && s.inFlight >= s.cfg.NormalInFlight:
		reason = "inflight"
	case p == Normal && s.ewma > s.cfg.LatencyBudget.Seconds():
		reason = "latency"
	}
	if reason != "" {
		now := s.cfg.Now()
		if p == Normal {
			s.lastNormalShed = now
		} else {
			s.lastCriticalShed = now
		}
		s.mu.Unlock()
		s.shed.WithLabelValues(p.String(), reason).Inc()
		if s.cfg.OnShed != nil {
			s.cfg.OnShed(p.String(), reason)
		}
		return nil, false, reason
	}
	s.inFlight++
	s.mu.Unlock()
	s.admitted.WithLabelValues(p.String()).Inc()
	s.inflight.Inc()
	start := s.cfg.Now()
	return func() {
		lat := s.cfg.Now().Sub(start).Seconds()
		s.mu.Lock()
		s.inFlight--
		s.ewma = 0.9*s.ewma + 0.1*lat
		s.mu.Unlock()
		s.inflight.Dec()
	}, true, ""
}

// Level is the shedder's pressure for the stage tier to see: 2 when critical
// work was shed in the last 2 s, 1 when normal work was (or half the normal
// in-flight budget is in use), else 0. Proxies slow paced broadcasts with it.
func (s *Shedder) Level() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	switch {
	case !s.lastCriticalShed.IsZero() && now.Sub(s.lastCriticalShed) < 2*time.Second:
		return 2
	case (!s.lastNormalShed.IsZero() && now.Sub(s.lastNormalShed) < 2*time.Second) || s.inFlight >= s.cfg.NormalInFlight/2:
		return 1
	}
	return 0
}

// RetryAfter is the configured base of Retry-After.
func (s *Shedder) RetryAfter() time.Duration { return s.cfg.RetryAfter }
