package engine

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// SetRequest is one stage change as the broadcaster asks for it.
type SetRequest struct {
	Event  string
	Key    string
	Target *wire.Target
	// Critical marks the change critical: proxies write it first (wire.Stage.Priority).
	Critical bool
	// Paced: proxies release it in waves (wire.Stage.Paced).
	Paced bool
	// TS is the broadcaster's wall clock, Unix milliseconds.
	TS int64
	// IdempotencyKey, when set, makes a retry with the same key return the first
	// result and create no new version.
	IdempotencyKey string
	// KeyTTL is how long the key is remembered (0: the engine's
	// IdempotencyTTL). The broadcaster gives keys it made up for keyless
	// requests a short one, so they cost no 24 h record each.
	KeyTTL time.Duration
	// MinVersion is an extra floor for the assigned version (0: none). Engines
	// assign max(newest logged + 1, their clock in microseconds, MinVersion), so
	// versions rise without it.
	MinVersion uint64
}

// SetResult is what SetStage did.
type SetResult struct {
	Stage wire.Stage
	// Replayed is true when an earlier request with the same idempotency key
	// produced Stage; nothing new was written.
	Replayed bool
}

// Errors shared by both engines.
var (
	// ErrIdempotencyConflict: the idempotency key was used for another stage.
	ErrIdempotencyConflict = errors.New("idempotency key already used for a different stage")
	// ErrNotDurable: the change was made but fewer replicas than asked for
	// acknowledged it in time. Retrying with the same idempotency key is safe.
	ErrNotDurable = errors.New("stage change not acknowledged by enough replicas")
)

// SkippedError reports log entries that did not decode (or named another
// event): Recent skipped them and returned the others. One bad entry never hides
// the rest of an event's history.
type SkippedError struct {
	Event string
	IDs   []string
	First error
}

// Add records one skipped entry.
func (e *SkippedError) Add(id string, err error) {
	e.IDs = append(e.IDs, id)
	if e.First == nil {
		e.First = err
	}
}

func (e *SkippedError) Error() string {
	return fmt.Sprintf("recent %s: skipped %d undecodable log entries (first %s: %v)", e.Event, len(e.IDs), e.IDs[0], e.First)
}

// Usable reports whether the stages a call returned alongside err can be used:
// err is nil or a *SkippedError.
func Usable(err error) bool {
	var se *SkippedError
	return err == nil || errors.As(err, &se)
}

// Defaults of both engines.
const (
	// DefaultLogLen is how many recent stage changes an event keeps.
	DefaultLogLen = 64
	// DefaultIdempotencyTTL is how long an idempotency key is remembered.
	DefaultIdempotencyTTL = 24 * time.Hour
	// DefaultReportTTL is how long delivery aggregates are kept.
	DefaultReportTTL = 24 * time.Hour
	// PresenceTTL: a proxy that has not reported on an event for this long is
	// dropped from the event's presence (its device count); its sends still count.
	PresenceTTL = 10 * time.Minute
)

// VersionDelivery is one proxy's counters for one version of one event.
type VersionDelivery struct {
	V     uint64 `json:"v"`
	Sent  uint64 `json:"sent"`
	Acked uint64 `json:"acked"`
	// Latency is a sparse histogram of the time from the stage's ts to each send,
	// in milliseconds (see package-level docs of proxy: internal/delivery).
	Latency []Bucket `json:"lat,omitempty"`
	// Cells splits Sent and Acked by (platform label, segment), with the sends
	// made from history at subscribe (catch-ups); PlatformLatency is a coarse
	// time-to-device histogram per platform label. In process only (the
	// analytics stream); the engine does not store them.
	Cells           []CellCount         `json:"-"`
	PlatformLatency map[string][]Bucket `json:"-"`
}

// CellCount is one (platform, segment) cell's share of a version's delivery.
type CellCount struct {
	Platform, Segment string
	Sent, Acked       uint64
	CatchUps          uint64 // sends of this version from history when a device subscribed behind
}

// CellDevices is how many devices of one (platform, segment) cell an event has on a proxy.
type CellDevices struct {
	Platform, Segment string
	Devices           int64
}

// Bucket is one non-empty bucket of a latency histogram: values <= UpperMS fell in it.
type Bucket struct {
	UpperMS int64  `json:"le"`
	Count   uint64 `json:"n"`
}

// EventDelivery is one proxy's report for one event.
type EventDelivery struct {
	Event string `json:"event"`
	// Devices is how many devices are subscribed to the event on this proxy now.
	Devices  int64             `json:"devices"`
	Versions []VersionDelivery `json:"versions,omitempty"`
	// DeviceCells splits Devices by (platform label, segment), in process only
	// (the analytics stream); the engine does not store it.
	DeviceCells []CellDevices `json:"-"`
}

// DeliveryReport is what one proxy publishes periodically: aggregates, never
// per-device data.
type DeliveryReport struct {
	Proxy  string          `json:"proxy"`
	AtMS   int64           `json:"at"`
	Events []EventDelivery `json:"events"`
}

// ProxyDelivery is one proxy's latest figures for one event and version, as the
// broadcaster reads them back to merge.
type ProxyDelivery struct {
	Proxy   string
	AtMS    int64 // when the proxy last reported on this event
	Devices int64
	Version VersionDelivery // zero V when the proxy has nothing for this version
}

// StageMapRecord is a stored stage map: the producer's JSON (validated by
// wire.ParseStageMap before it was stored) and the version the engine gave it.
type StageMapRecord struct {
	Version   uint64
	UpdatedMS int64
	Raw       []byte
}

// Snapshot is what the prefetch path reads for an event, in one round trip.
type Snapshot struct {
	Map     *StageMapRecord // nil: no stage map
	Current *wire.Stage     // nil: no stage yet
	// Live is the producer's "event window" signal: prefetch for this event is
	// critical and shed last.
	Live bool
}

// Percentiles returns the time from a stage's ts until 50, 90, 99 and 100 % of
// denom devices had been sent it ("p50" ... "p100"; the upper bound of the
// histogram bucket; nil while not reached). The delivery report and the
// analytics tail both use it, so they agree.
func Percentiles(buckets []Bucket, denom uint64) map[string]*int64 {
	out := map[string]*int64{"p50": nil, "p90": nil, "p99": nil, "p100": nil}
	if denom == 0 {
		return out
	}
	b := append([]Bucket(nil), buckets...)
	sort.Slice(b, func(i, j int) bool { return b[i].UpperMS < b[j].UpperMS })
	for name, pct := range map[string]float64{"p50": 50, "p90": 90, "p99": 99, "p100": 100} {
		need := uint64(float64(denom)*pct/100 + 0.999999)
		var cum uint64
		for _, x := range b {
			cum += x.Count
			if cum >= need {
				ms := x.UpperMS
				out[name] = &ms
				break
			}
		}
	}
	return out
}
