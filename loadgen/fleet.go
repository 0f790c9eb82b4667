package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// FleetControl is a client of a local fleet's control interface (`make cluster`):
// loopback HTTP with a bearer token, both read from the fleet's control.json.
// The load generator injects faults through it and never touches a process.
type FleetControl struct {
	Addr  string `json:"addr"`
	Token string `json:"token"`
	HTTP  *http.Client
}

// OpenFleetControl reads a control.json.
func OpenFleetControl(path string) (*FleetControl, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("fleet control file: %w (is `make cluster` running? it writes control.json in its log folder)", err)
	}
	var f FleetControl
	if err := json.Unmarshal(b, &f); err != nil || f.Addr == "" || f.Token == "" {
		return nil, fmt.Errorf("fleet control file %s: want {\"addr\":...,\"token\":...}", path)
	}
	f.HTTP = &http.Client{Timeout: 10 * time.Second}
	return &f, nil
}

// FleetMember is one member as the control interface lists it.
type FleetMember struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Addr     string `json:"addr"`
	PID      int    `json:"pid"`
	State    string `json:"state"`
	Restarts int    `json:"restarts"`
	LastExit string `json:"last_exit,omitempty"`
	Role     string `json:"role,omitempty"`
}

// FaultResult is what an injected fault did.
type FaultResult struct {
	Action string `json:"action"`
	Member string `json:"member"`
	AtMS   int64  `json:"at_ms"`
}

func (f *FleetControl) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+f.Addr+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+f.Token)
	resp, err := f.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("fleet %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fleet %s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Members lists the fleet.
func (f *FleetControl) Members(ctx context.Context) ([]FleetMember, error) {
	var ms []FleetMember
	return ms, f.call(ctx, http.MethodGet, "/v1/members", nil, &ms)
}

// Act applies kill, drain, pause, resume or restart to a member; pause lasts
// for d when d > 0.
func (f *FleetControl) Act(ctx context.Context, member, action string, d time.Duration) (FleetMember, error) {
	path := "/v1/members/" + member + "/" + action
	if d > 0 {
		path += "?for=" + d.String()
	}
	var m FleetMember
	return m, f.call(ctx, http.MethodPost, path, nil, &m)
}

// Inject injects a game-day fault (see Fault).
func (f *FleetControl) Inject(ctx context.Context, action, target string, d time.Duration) (FaultResult, error) {
	body := map[string]string{"action": action, "target": target}
	if d > 0 {
		body["duration"] = d.String()
	}
	var r FaultResult
	return r, f.call(ctx, http.MethodPost, "/v1/faults", body, &r)
}
