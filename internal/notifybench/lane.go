package notifybench

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// laneHist is a snapshot of the broadcaster's notification_seconds histogram
// for one priority: the time from a note's arrival in its lane to stored and
// pushed, as the broadcaster itself measures it. The difference of two
// snapshots says how much of a POST's time was spent inside the broadcaster's
// lane and engine, and so how much before it (HTTP, scheduling).
type laneHist struct {
	bounds []float64 // upper bounds, seconds
	counts []uint64  // cumulative
	total  uint64
}

func scrapeLane(ctx context.Context, base, prio string) (laneHist, error) {
	return scrapeHist(ctx, base, "stagecast_broadcaster_notification_seconds", prio)
}

// scrapeHist snapshots one priority's series of a broadcaster histogram.
func scrapeHist(ctx context.Context, base, name, prio string) (laneHist, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return laneHist{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return laneHist{}, fmt.Errorf("scrape %s: %w", base, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return laneHist{}, fmt.Errorf("scrape %s: %w", base, err)
	}
	mf := mfs[name]
	if mf == nil {
		return laneHist{}, fmt.Errorf("scrape %s: no %s", base, name)
	}
	for _, m := range mf.Metric {
		if label(m, "priority") != prio || m.Histogram == nil {
			continue
		}
		var h laneHist
		for _, b := range m.Histogram.Bucket {
			h.bounds = append(h.bounds, b.GetUpperBound())
			h.counts = append(h.counts, b.GetCumulativeCount())
		}
		h.total = m.Histogram.GetSampleCount()
		return h, nil
	}
	return laneHist{}, nil // no note of this priority yet
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
func (h laneHist) p99Since(prev laneHist) float64 {
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
