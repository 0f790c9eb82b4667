package notifybench

import (
	"context"
	"fmt"
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/stagecast/stagecast/internal/hostile"
)

// histSnap is a snapshot of one priority's series of a broadcaster
// histogram. The difference of two snapshots is what was observed between
// them.
type histSnap struct {
	bounds []float64 // upper bounds, seconds
	counts []uint64  // cumulative
	total  uint64
}

// criticalSnap holds the broadcaster's two histograms for critical notes:
// lane is notification_seconds (lane arrival to stored and pushed), engine
// notification_engine_seconds (the engine calls alone). Between two
// snapshots, lane less engine is the wait in the lane; a POST's time beyond
// lane was spent before it (HTTP, scheduling).
type criticalSnap struct{ lane, engine histSnap }

func (r *run) criticalHists(ctx context.Context) (criticalSnap, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	mfs, err := hostile.Metrics(ctx, r.bc.BaseURL+"/metrics")
	if err != nil {
		return criticalSnap{}, err
	}
	var s criticalSnap
	if s.lane, err = histOf(mfs, "stagecast_broadcaster_notification_seconds", "critical"); err != nil {
		return s, err
	}
	s.engine, err = histOf(mfs, "stagecast_broadcaster_notification_engine_seconds", "critical")
	return s, err
}

// histOf reads one priority's series of the histogram name; empty when no
// note of that priority was observed yet.
func histOf(mfs map[string]*dto.MetricFamily, name, prio string) (histSnap, error) {
	mf := mfs[name]
	if mf == nil {
		return histSnap{}, fmt.Errorf("the broadcaster's metrics have no %s", name)
	}
	for _, m := range mf.Metric {
		if label(m, "priority") != prio || m.Histogram == nil {
			continue
		}
		var h histSnap
		for _, b := range m.Histogram.Bucket {
			h.bounds = append(h.bounds, b.GetUpperBound())
			h.counts = append(h.counts, b.GetCumulativeCount())
		}
		h.total = m.Histogram.GetSampleCount()
		return h, nil
	}
	return histSnap{}, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// p99Since is the upper bound (ms) of the bucket holding the 99th percentile
// of the notes observed between prev and h; +Inf past the last bucket, 0 when
// none was observed. Buckets double from 0.5 ms, so it is an upper bound
// within a factor of 2.
func (h histSnap) p99Since(prev histSnap) float64 {
	n := h.total - prev.total
	if n == 0 || len(h.counts) == 0 {
		return 0
	}
	want := uint64(math.Ceil(0.99 * float64(n)))
	for i, c := range h.counts {
		var p uint64
		if i < len(prev.counts) {
			p = prev.counts[i]
		}
		if c-p >= want {
			return h.bounds[i] * 1000
		}
	}
	return math.Inf(1)
}
