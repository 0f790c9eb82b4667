package localcluster

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stagecast/stagecast/internal/fleetapi"
)

// ControlFile, ControlInfo, Fault and FaultResult: see package fleetapi.
const ControlFile = fleetapi.ControlFile

type (
	ControlInfo = fleetapi.ControlInfo
	Fault       = fleetapi.Fault
	FaultResult = fleetapi.FaultResult
)

// control serves the fleet's control interface on loopback.
type control struct {
	members []*member
	token   string
	out     io.Writer
	ctx     context.Context // the fleet's: pauses are undone when it ends
}

func newToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// serveControl listens on addr (loopback only), writes dir/control.json (0600)
// and serves until ctx ends.
func serveControl(ctx context.Context, addr, dir string, members []*member, out io.Writer) (ControlInfo, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ControlInfo{}, fmt.Errorf("control address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return ControlInfo{}, fmt.Errorf("control address %q: must be on loopback", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return ControlInfo{}, fmt.Errorf("control: %w", err)
	}
	c := &control{members: members, token: newToken(), out: out, ctx: ctx}
	info := ControlInfo{Addr: l.Addr().String(), Token: c.token}
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, ControlFile), append(b, '\n'), 0o600); err != nil {
		l.Close()
		return ControlInfo{}, err
	}
	srv := &http.Server{Handler: c.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	go func() { <-ctx.Done(); _ = srv.Close() }()
	return info, nil
}

func (c *control) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, _ *http.Request) {
		out := make([]MemberStatus, 0, len(c.members))
		for _, m := range c.members {
			s := m.status()
			if m.kind == "redis" && s.State == "running" {
				s.Role = redisRole(m.addr)
			}
			out = append(out, withReadiness(s))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/members/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		m := c.member(r.PathValue("name"))
		if m == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no member " + r.PathValue("name")})
			return
		}
		var d time.Duration
		if v := r.URL.Query().Get("for"); v != "" {
			var err error
			if d, err = time.ParseDuration(v); err != nil || d <= 0 || d > 10*time.Minute {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "for: a duration up to 10m"})
				return
			}
		}
		if err := c.act(m, r.PathValue("action"), d); err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, m.status())
	})
	mux.HandleFunc("POST /v1/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
			return
		}
		res, err := c.fault(f)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(tok), []byte(c.token)) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "bad or missing control token (see " + ControlFile + ")"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (c *control) member(name string) *member {
	for _, m := range c.members {
		if m.name == name {
			return m
		}
	}
	return nil
}

// act applies one operator action to m: kill (SIGKILL: a crash; the supervisor
// restarts it with backoff), drain (SIGTERM: a graceful stop; restarted like a
// rolling update), pause (SIGSTOP, for d if given), resume (SIGCONT), restart
// (SIGTERM, restarted at once).
func (c *control) act(m *member, action string, d time.Duration) error {
	var err error
	switch action {
	case "kill":
		err = m.signal(syscall.SIGKILL)
	case "drain":
		err = m.signal(syscall.SIGTERM)
	case "pause":
		if err = m.signal(syscall.SIGSTOP); err == nil && d > 0 {
			go func() {
				select {
				case <-time.After(d):
				case <-c.ctx.Done():
				}
				_ = m.signal(syscall.SIGCONT)
			}()
		}
	case "resume":
		err = m.signal(syscall.SIGCONT)
	case "restart":
		m.mu.Lock()
		m.now = true
		m.mu.Unlock()
		err = m.signal(syscall.SIGTERM)
	default:
		return fmt.Errorf("unknown action %q (kill, drain, pause, resume, restart)", action)
	}
	if err == nil {
		fmt.Fprintf(c.out, "%s  control: %s %s\n", time.Now().Format("15:04:05"), action, m.name)
	}
	return err
}

// fault resolves a game-day fault to a member and applies it.
func (c *control) fault(f Fault) (FaultResult, error) {
	if slices.Contains(fleetapi.NetworkActions, f.Action) {
		return c.networkFault(f)
	}
	var kind, action string
	var d time.Duration
	switch f.Action {
	case "proxy-kill":
		kind, action = "proxy", "kill"
	case "proxy-drain":
		kind, action = "proxy", "drain"
	case "broadcaster-kill":
		kind, action = "broadcaster", "kill"
	case "redis-master-kill":
		kind, action = "redis", "kill"
	case "redis-pause":
		kind, action, d = "redis", "pause", 5*time.Second
		if f.Duration != "" {
			var err error
			if d, err = time.ParseDuration(f.Duration); err != nil || d <= 0 || d > 10*time.Minute {
				return FaultResult{}, fmt.Errorf("duration %q: a duration up to 10m", f.Duration)
			}
		}
	default:
		return FaultResult{}, fmt.Errorf("unknown fault %q (%s, %s)", f.Action, strings.Join(fleetapi.Actions, ", "), strings.Join(fleetapi.NetworkActions, ", "))
	}
	var candidates []*member
	for _, m := range c.members {
		if m.kind != kind || m.status().State != "running" {
			continue
		}
		if kind == "redis" && redisRole(m.addr) != "master" {
			continue
		}
		candidates = append(candidates, m)
	}
	sort.Slice(candidates, func(i, j int) bool { return candidates[i].addr < candidates[j].addr })
	if len(candidates) == 0 {
		return FaultResult{}, fmt.Errorf("%s: no running %s to target", f.Action, kind)
	}
	var m *member
	switch f.Target {
	case "", "random":
		m = candidates[mrand.IntN(len(candidates))]
	default:
		i, err := strconv.Atoi(f.Target)
		if err != nil || i < 0 || i >= len(candidates) {
			return FaultResult{}, fmt.Errorf("target %q: \"random\" or an index below %d", f.Target, len(candidates))
		}
		m = candidates[i]
	}
	if err := c.act(m, action, d); err != nil {
		return FaultResult{}, err
	}
	return FaultResult{Action: f.Action, Member: m.name, AtMS: time.Now().UnixMilli()}, nil
}

// redisRole is "master" or "replica" (or "" when the node does not answer).
func redisRole(addr string) string {
	_, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "-p", port, "ROLE").Output()
	if err != nil {
		return ""
	}
	switch first, _, _ := strings.Cut(string(out), "\n"); strings.TrimSpace(first) {
	case "master":
		return "master"
	case "slave":
		return "replica"
	}
	return ""
}
