package broadcaster

import (
	"context"
	"net/http"
	"sort"
	"strconv"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// The delivery report: the proxies' figures for one version, merged.

// Report is producer.Report: the API's types are the public client's.
type Report = producer.Report

// ProxyReport is producer.ProxyReport: the API's types are the public client's.
type ProxyReport = producer.ProxyReport

func (s *Server) report(r *http.Request) (any, error) {
	event := r.PathValue("event")
	recent, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]wire.Stage, error) {
		return s.eng.Recent(ctx, event, engine.DefaultLogLen)
	})
	if err != nil {
		return nil, err
	}
	if len(recent) == 0 {
		return nil, errf(http.StatusNotFound, "not_found", "event %s has no stage yet", event)
	}
	v := recent[len(recent)-1].V
	if q := r.URL.Query().Get("v"); q != "" {
		v, err = strconv.ParseUint(q, 10, 64)
		if err != nil || v == 0 {
			return nil, errf(http.StatusBadRequest, "bad_request", "v must be an integer > 0, not %q", q)
		}
	}
	rep := Report{Event: event, V: v}
	for _, st := range recent {
		if st.V == v {
			rep.Stage, rep.TS = st.Key, st.TS
		}
	}
	pds, err := call(s, s.breakers.reads, r, func(ctx context.Context) ([]engine.ProxyDelivery, error) { return s.eng.Delivery(ctx, event, v) })
	if err != nil {
		return nil, err
	}
	return mergeReport(rep, pds, s.cfg.Now().UnixMilli()-s.cfg.ReportStaleAfter.Milliseconds()), nil
}

// mergeReport sums the proxies' figures and computes the time-to-percent
// thresholds from the merged latency buckets.
func mergeReport(rep Report, pds []engine.ProxyDelivery, freshAfterMS int64) Report {
	var buckets []engine.Bucket
	rep.PerProxy = []ProxyReport{}
	for _, pd := range pds {
		rep.Proxies++
		pr := ProxyReport{Proxy: pd.Proxy, Sent: pd.Version.Sent, Acked: pd.Version.Acked}
		if pd.AtMS >= freshAfterMS {
			rep.Devices += pd.Devices
			pr.Devices = pd.Devices
		} else {
			rep.StaleProxies++
			pr.Stale = true
		}
		rep.Sent += pd.Version.Sent
		rep.Acked += pd.Version.Acked
		buckets = append(buckets, pd.Version.Latency...)
		pr.SentMS = engine.Percentiles(append([]engine.Bucket(nil), pd.Version.Latency...), max(uint64(pr.Devices), pr.Sent))
		rep.PerProxy = append(rep.PerProxy, pr)
	}
	sort.Slice(rep.PerProxy, func(i, j int) bool { return rep.PerProxy[i].Proxy < rep.PerProxy[j].Proxy })
	denom := max(uint64(rep.Devices), rep.Sent)
	rep.SentMS = engine.Percentiles(buckets, denom)
	if denom == 0 {
		return rep
	}
	rep.SentPct = 100 * float64(rep.Sent) / float64(denom)
	rep.AckedPct = 100 * float64(rep.Acked) / float64(denom)
	return rep
}
