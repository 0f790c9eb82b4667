// Package hostile is stagecast's hostile-client suite: what an attacker with no
// credential (or a stolen device token) can do to the edge, written as clients
// that measure what it cost the servers through their own /metrics.
//
// The tests in this package start the all-in-one stack of `make run` in-process
// on loopback and assert a bound for every attack (topics, goroutines, heap,
// metric series, response bytes, engine lookups). The same attacks run
// black-box against a running deployment on loopback when STAGECAST_HOSTILE_PROXY
// (ws://host:port/v1/ws) and STAGECAST_HOSTILE_GRAPHQL (http://host:port/graphql)
// are set; docs/security.md quotes both. Every loop is bounded in count and time.
package hostile

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics scrapes a Prometheus text endpoint.
func Metrics(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// Value sums a family's samples (gauges, counters, untyped); 0 when absent.
func Value(mfs map[string]*dto.MetricFamily, name string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	var sum float64
	for _, m := range mf.Metric {
		switch {
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}

// Series counts a family's series (label combinations).
func Series(mfs map[string]*dto.MetricFamily, name string) int {
	if mf := mfs[name]; mf != nil {
		return len(mf.Metric)
	}
	return 0
}

// FloodResult is what a flooding client achieved.
type FloodResult struct {
	Connections int                          // connections opened (it reconnects when closed)
	Frames      int                          // sub frames sent
	Events      int                          // made-up event ids named
	Closes      map[websocket.StatusCode]int // how the proxy closed its connections
	Refused     int                          // upgrades refused (429/503)
}

// FloodMadeUpEvents sends sub frames naming perFrame made-up event ids, one
// every interval, for d, as a client with no credential would: it reads every
// answer, and reconnects at once whenever the proxy closes it.
func FloodMadeUpEvents(ctx context.Context, wsURL string, perFrame int, interval, d time.Duration) (FloodResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d+10*time.Second)
	defer cancel()
	res := FloodResult{Closes: map[websocket.StatusCode]int{}}
	end := time.Now().Add(d)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	n := 0
	for time.Now().Before(end) {
		ws, resp, err := websocket.Dial(ctx, wsURL, nil)
		if err != nil {
			if resp != nil {
				res.Refused++
				<-tick.C
				continue
			}
			return res, err
		}
		res.Connections++
		closed := make(chan websocket.StatusCode, 1)
		go func() {
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					closed <- websocket.CloseStatus(err)
					return
				}
			}
		}()
	conn:
		for time.Now().Before(end) {
			var b strings.Builder
			b.WriteString(`{"op":"sub","events":{`)
			for i := 0; i < perFrame; i++ {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"made-up-%d":0`, n)
				n++
			}
			b.WriteString(`}}`)
			if err := ws.Write(ctx, websocket.MessageText, []byte(b.String())); err == nil {
				res.Frames++
				res.Events += perFrame
			}
			select {
			case st := <-closed:
				res.Closes[st]++
				break conn
			case <-tick.C:
			case <-ctx.Done():
				ws.CloseNow()
				return res, ctx.Err()
			}
		}
		ws.CloseNow()
	}
	return res, nil
}

// Aliased returns a GraphQL document selecting liveEvent(id: event) n times
// under aliases, each with its whole stage map: the amplification query.
func Aliased(event string, n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, ` a%d: liveEvent(id: %q) { stages { payload } }`, i, event)
	}
	b.WriteString(" }")
	return b.String()
}

// Post sends a GraphQL document and returns the status, the body size and the
// time to the last byte.
func Post(ctx context.Context, graphqlURL, query string, header http.Header) (status, bytes int, took time.Duration, err error) {
	body := fmt.Sprintf(`{"query":%q}`, query)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, graphqlURL, strings.NewReader(body))
	if err != nil {
		return 0, 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, int(n), time.Since(start), err
}
