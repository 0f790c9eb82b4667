package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client calls a broadcaster's producer API. The zero HTTP is
// http.DefaultClient.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:8081
	Token   string
	HTTP    *http.Client
}

// APIError is an error reply of the producer API.
type APIError struct {
	Status int    `json:"-"`
	Code   string `json:"code"`
	Msg    string `json:"msg"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d): %s", e.Code, e.Status, e.Msg)
}

func (c *Client) do(ctx context.Context, method, path string, body any, hdr http.Header, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte: // sent as is
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error APIError `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: "http_error", Msg: strings.TrimSpace(string(b))}
		}
		e.Error.Status = resp.StatusCode
		return &e.Error
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode reply: %w", method, path, err)
		}
	}
	return nil
}

// SetStage changes event's stage. idemKey may be empty.
func (c *Client) SetStage(ctx context.Context, event, stage string, target *Target, idemKey string) (StageReply, error) {
	var out StageReply
	hdr := http.Header{}
	if idemKey != "" {
		hdr.Set("Idempotency-Key", idemKey)
	}
	err := c.do(ctx, http.MethodPost, "/v1/events/"+url.PathEscape(event)+"/stage", StageRequest{Stage: stage, Target: target}, hdr, &out)
	return out, err
}

// SetStageWith changes a stage with every field of StageRequest (priority included).
func (c *Client) SetStageWith(ctx context.Context, event string, req StageRequest, idemKey string) (StageReply, error) {
	var out StageReply
	var hdr http.Header
	if idemKey != "" {
		hdr = http.Header{"Idempotency-Key": {idemKey}}
	}
	err := c.do(ctx, http.MethodPost, "/v1/events/"+url.PathEscape(event)+"/stage", req, hdr, &out)
	return out, err
}

// Get returns event's current stage.
func (c *Client) Get(ctx context.Context, event string) (StageReply, error) {
	var out StageReply
	err := c.do(ctx, http.MethodGet, "/v1/events/"+url.PathEscape(event), nil, nil, &out)
	return out, err
}

// Report returns the delivery report of version v (0: the current version).
func (c *Client) Report(ctx context.Context, event string, v uint64) (Report, error) {
	var out Report
	path := "/v1/events/" + url.PathEscape(event) + "/report"
	if v > 0 {
		path += "?v=" + strconv.FormatUint(v, 10)
	}
	err := c.do(ctx, http.MethodGet, path, nil, nil, &out)
	return out, err
}

// PutStageMap stores raw (a stage map as JSON) for event.
func (c *Client) PutStageMap(ctx context.Context, event string, raw []byte) (MapReply, error) {
	var out MapReply
	err := c.do(ctx, http.MethodPut, "/v1/events/"+url.PathEscape(event)+"/stages", raw, nil, &out)
	return out, err
}

// GetStageMap returns event's stored stage map.
func (c *Client) GetStageMap(ctx context.Context, event string) (StoredMap, error) {
	var out StoredMap
	err := c.do(ctx, http.MethodGet, "/v1/events/"+url.PathEscape(event)+"/stages", nil, nil, &out)
	return out, err
}

// SetLive switches event's window on or off (prefetch for a live event is shed last).
func (c *Client) SetLive(ctx context.Context, event string, live bool) error {
	return c.do(ctx, http.MethodPut, "/v1/events/"+url.PathEscape(event)+"/window", WindowRequest{Live: &live}, nil, nil)
}

// Arm schedules a stage (POST /v1/events/{event}/schedule).
func (c *Client) Arm(ctx context.Context, event string, req ScheduleRequest, idemKey string) (ScheduleReply, error) {
	var out ScheduleReply
	var hdr http.Header
	if idemKey != "" {
		hdr = http.Header{"Idempotency-Key": {idemKey}}
	}
	err := c.do(ctx, http.MethodPost, "/v1/events/"+url.PathEscape(event)+"/schedule", req, hdr, &out)
	return out, err
}

// CancelSchedule cancels schedule id of version v.
func (c *Client) CancelSchedule(ctx context.Context, event, id string, v uint64) error {
	return c.do(ctx, http.MethodDelete, "/v1/events/"+url.PathEscape(event)+"/schedule/"+url.PathEscape(id)+"?v="+strconv.FormatUint(v, 10), nil, nil, nil)
}

// Schedules lists event's armed schedules.
func (c *Client) Schedules(ctx context.Context, event string) ([]ScheduleReply, error) {
	var out struct {
		Schedules []ScheduleReply `json:"schedules"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/events/"+url.PathEscape(event)+"/schedule", nil, nil, &out)
	return out.Schedules, err
}

// Notify sends a notification (POST /v1/notifications). idemKey may be "".
func (c *Client) Notify(ctx context.Context, req NotifyRequest, idemKey string) (NotifyReply, error) {
	var out NotifyReply
	var hdr http.Header
	if idemKey != "" {
		hdr = http.Header{"Idempotency-Key": {idemKey}}
	}
	err := c.do(ctx, http.MethodPost, "/v1/notifications", req, hdr, &out)
	return out, err
}

// NoteReport fetches a notification's delivery report.
func (c *Client) NoteReport(ctx context.Context, id string) (NoteReport, error) {
	var out NoteReport
	err := c.do(ctx, http.MethodGet, "/v1/notifications/"+url.PathEscape(id)+"/report", nil, nil, &out)
	return out, err
}

// MaxBatch is the most notifications one NotifyBatch call sends (the API's
// bound; a batch's body is also bounded, at 4 MiB).
const MaxBatch = 1000

// NotifyBatch sends up to MaxBatch notifications in one request (POST
// /v1/notifications:batch), each with its own Idempotency-Key, and returns
// one result per notification, in order. A refused notification is a result
// with its status and error, never the call's error; the call fails only when
// the batch itself cannot be sent or read.
func (c *Client) NotifyBatch(ctx context.Context, notes []BatchNote) ([]BatchResult, error) {
	var out BatchReply
	err := c.do(ctx, http.MethodPost, "/v1/notifications:batch", struct {
		Notifications []BatchNote `json:"notifications"`
	}{notes}, nil, &out)
	if err == nil && len(out.Results) != len(notes) {
		err = fmt.Errorf("POST /v1/notifications:batch: %d results for %d notifications", len(out.Results), len(notes))
	}
	for i := range out.Results {
		if e := out.Results[i].Error; e != nil {
			e.Status = out.Results[i].Status
		}
	}
	return out.Results, err
}
