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

	"github.com/stagecast/stagecast/internal/fleetapi"
)

// FleetControl is a client of a local fleet's control interface (`make cluster`):
// loopback HTTP with a bearer token, both read from the fleet's control.json.
// The load generator injects faults through it and never touches a process.
type FleetControl struct {
	Addr  string // host:port
	Token string
	HTTP  *http.Client
}

// OpenFleetControl reads a control.json.
func OpenFleetControl(path string) (*FleetControl, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("fleet control file: %w (is `make cluster` running? it writes control.json in its log folder)", err)
	}
	var ci fleetapi.ControlInfo
	if err := json.Unmarshal(b, &ci); err != nil || ci.Addr == "" || ci.Token == "" {
		return nil, fmt.Errorf("fleet control file %s: want {\"addr\":...,\"token\":...}", path)
	}
	return &FleetControl{Addr: ci.Addr, Token: ci.Token, HTTP: &http.Client{Timeout: 10 * time.Second}}, nil
}

// FleetMember and FaultResult are the control interface's wire types.
type (
	FleetMember = fleetapi.Member
	FaultResult = fleetapi.FaultResult
)

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
	body := FleetFault{Action: action, Target: target}
	if d > 0 {
		body.Duration = d.String()
	}
	return f.InjectFault(ctx, body)
}

// FleetFault is the control interface's fault request, network faults
// included (member, link, direction, latency, jitter, rate).
type FleetFault = fleetapi.Fault

// InjectFault injects any fault the fleet takes.
func (f *FleetControl) InjectFault(ctx context.Context, body FleetFault) (FaultResult, error) {
	var r FaultResult
	return r, f.call(ctx, http.MethodPost, "/v1/faults", body, &r)
}
