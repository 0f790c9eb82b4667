package broadcaster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// The broadcaster's configuration and its documented defaults.

// Config configures the broadcaster. Zero values are the documented defaults.
type Config struct {
	// Token is a single producer bearer token, named "default", allowed every
	// event. Token and Producers may be combined; at least one token is required.
	// Every token must pass CheckTokenStrength.
	Token string
	// Producers are named tokens, each limited to its event patterns.
	Producers []Producer
	// PublicReads lets GET /v1/events/{event} through without a token (the current
	// stage is what every device receives anyway). The report always needs the token.
	PublicReads bool
	// EngineTimeout bounds each engine call. Default 2s.
	EngineTimeout time.Duration
	// StageBudget bounds how long one stage-change request may take in all: it
	// retries a failing engine (a Redis master failing over) with jittered
	// backoff, under one Idempotency-Key, until then. Default 4.5s.
	StageBudget time.Duration
	// BreakerFailures consecutive engine failures open the breaker; it stays open
	// BreakerOpenFor before letting a probe through. Defaults 5, 5s.
	BreakerFailures uint32
	BreakerOpenFor  time.Duration
	// ReportStaleAfter: a proxy that has not reported on an event for this long no
	// longer counts toward "devices connected" (its sends still count). Default 30s.
	ReportStaleAfter time.Duration
	// MaxMapBytes is the largest stage map accepted (413 above). Default 1 MiB.
	MaxMapBytes int64
	// ProducerRate and ProducerBurst bound each producer's requests per second
	// (429 rate_limited past them, with Retry-After). Defaults
	// DefaultProducerRate and twice that; a negative ProducerRate turns the
	// limit off.
	ProducerRate  float64
	ProducerBurst int
	// Lanes size the notification lanes, by wire.Priority; zero fields take
	// DefaultLanes.
	Lanes [wire.NumPriorities]LaneConfig
	// LowYield is how the low lane gives way to high and critical notes;
	// zero fields take DefaultLowYield's, field by field.
	LowYield LowYield
	// OnAudit, when set, is called with every audit entry (stage changes,
	// schedules, map and window writes, notifications accepted; event "" for
	// notifications): the analytics stream. It must not block.
	OnAudit func(event string, a engine.AuditEntry)
	// OnNote, when set, is called with each notification stored (not for
	// replays of an idempotency key): the analytics stream's accepted counts
	// per type and priority. It must not block.
	OnNote     func(NoteAccepted)
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// DefaultConfig returns the broadcaster's documented defaults (the flags of
// `stagecast broadcaster` take theirs from it). New fills each zero field of
// its Config from it (package defaults; each lane field by field), then
// validates.
func DefaultConfig() Config {
	return Config{
		EngineTimeout:    2 * time.Second,
		StageBudget:      4500 * time.Millisecond,
		BreakerFailures:  5,
		BreakerOpenFor:   5 * time.Second,
		ReportStaleAfter: 30 * time.Second,
		MaxMapBytes:      wire.DefaultMaxMapSize,
		ProducerRate:     DefaultProducerRate,
		ProducerBurst:    int(2 * DefaultProducerRate),
		Lanes:            DefaultLanes,
		LowYield:         DefaultLowYield,
		Logger:           slog.Default(),
		Now:              time.Now,
	}
}

// fill is New's first step: Token joins Producers as "default", and the zero
// fields take DefaultConfig's values.
func (c *Config) fill() {
	if c.Token != "" {
		c.Producers = append(append([]Producer(nil), c.Producers...), Producer{Name: "default", Token: c.Token})
		c.Token = ""
	}
	lanes, ly := c.Lanes, c.LowYield
	defaults.Fill(c, DefaultConfig())
	for p := range lanes {
		defaults.Fill(&lanes[p], DefaultLanes[p])
	}
	defaults.Fill(&ly, DefaultLowYield)
	c.Lanes, c.LowYield = lanes, ly
}

// Validate checks a filled Config (see DefaultConfig) and changes nothing.
// Negative values are errors, except ProducerRate, where negative turns the
// limit off.
func (c *Config) Validate() error {
	ps := c.Producers
	if c.Token != "" {
		ps = append(append([]Producer(nil), ps...), Producer{Name: "default", Token: c.Token})
	}
	if _, err := newProducerSet(ps); err != nil {
		return err
	}
	var errs []error
	for name, v := range map[string]time.Duration{"EngineTimeout": c.EngineTimeout, "StageBudget": c.StageBudget,
		"BreakerOpenFor": c.BreakerOpenFor, "ReportStaleAfter": c.ReportStaleAfter} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("broadcaster config: %s = %v must be > 0", name, v))
		}
	}
	if c.BreakerFailures == 0 || c.MaxMapBytes <= 0 || c.ProducerBurst <= 0 || c.ProducerRate == 0 {
		errs = append(errs, fmt.Errorf("broadcaster config: BreakerFailures %d, MaxMapBytes %d, ProducerBurst %d and ProducerRate %v must be > 0 (ProducerRate negative: off)",
			c.BreakerFailures, c.MaxMapBytes, c.ProducerBurst, c.ProducerRate))
	}
	if err := validateLanes(&c.Lanes); err != nil {
		errs = append(errs, err)
	}
	if err := c.LowYield.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Logger == nil || c.Now == nil {
		errs = append(errs, errors.New("broadcaster config: Logger and Now must be set (New fills them)"))
	}
	return errors.Join(errs...)
}

// DefaultProducerRate is each producer's request rate bound (per second): far
// above what a console or a scheduler sends, a cap on a runaway script.
const DefaultProducerRate = 2000

// AutoKeyTTL is how long the key made up for a keyless stage change is kept:
// long enough for the producer to retry with it after an outcome_unknown,
// short enough that keyless traffic keeps no 24 h record per request.
const AutoKeyTTL = 10 * time.Minute
