package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// producer is the loadgen's own minimal client of the producer API: loadgen
// imports only the device client, the wire format and its own code, so it runs
// against any deployment.
type producer struct {
	base, token string
	hc          *http.Client
}

type stageReply struct {
	V  uint64 `json:"v"`
	TS int64  `json:"ts"`
}

func (p *producer) do(ctx context.Context, method, path string, body []byte, idem string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(p.base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	hc := p.hc
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (p *producer) putStageMap(ctx context.Context, event string, raw []byte) error {
	return p.do(ctx, http.MethodPut, "/v1/events/"+url.PathEscape(event)+"/stages", raw, "", nil)
}

func (p *producer) setLive(ctx context.Context, event string, live bool) error {
	b, _ := json.Marshal(map[string]bool{"live": live})
	return p.do(ctx, http.MethodPut, "/v1/events/"+url.PathEscape(event)+"/window", b, "", nil)
}

func (p *producer) setStage(ctx context.Context, event, stage, idem string, paced bool) (stageReply, error) {
	body := map[string]any{"stage": stage}
	if paced {
		body["paced"] = true
	}
	b, _ := json.Marshal(body)
	var r stageReply
	err := p.do(ctx, http.MethodPost, "/v1/events/"+url.PathEscape(event)+"/stage", b, idem, &r)
	return r, err
}

// setStageRetrying retries a failed stage change with the same key (a 503
// outcome_unknown while a Redis master fails over) for up to within.
func (p *producer) setStageRetrying(ctx context.Context, event, stage, idem string, paced bool, within time.Duration) (stageReply, error) {
	deadline := time.Now().Add(within)
	for {
		r, err := p.setStage(ctx, event, stage, idem, paced)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
