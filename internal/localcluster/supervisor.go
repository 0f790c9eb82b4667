package localcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/stagecast/stagecast/internal/fleetapi"
	"github.com/stagecast/stagecast/internal/netfault"
)

// member is one supervised process of the fleet. Like a Kubernetes pod under a
// Deployment, a member that exits is restarted (with backoff) unless the fleet
// is stopping; the rest of the fleet keeps serving meanwhile.
//
// Concurrency: the fields under mu are shared by the member's supervise
// goroutine, the control server and Run's shutdown.
type member struct {
	name string
	kind string // redis, broadcaster, proxy, prefetch
	addr string // host:port it serves
	argv []string
	env  []string
	dir  string // logs
	// links are the member's network links (Config.Links), fixed at start:
	// a restarted member dials the same ones.
	links []memberLink

	mu        sync.Mutex
	cmd       *exec.Cmd
	state     string // starting, running, paused, restarting, stopped
	restarts  int
	startedAt time.Time
	lastExit  string
	stopping  bool          // the fleet is stopping: do not restart
	now       bool          // restart at once (a restart the operator asked for)
	exited    chan struct{} // closed when the current process exits
}

// memberLink is one of a member's links: to a Redis node (kind redis, peer
// its address) or the devices' way in (kind devices).
type memberLink struct {
	link *netfault.Link
	kind string
	peer string
}

// MemberStatus is what the control interface reports about a member.
type MemberStatus = fleetapi.Member

func (m *member) status() MemberStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := MemberStatus{Name: m.name, Kind: m.kind, Addr: m.addr, State: m.state, Restarts: m.restarts, LastExit: m.lastExit}
	for _, ml := range m.links {
		s.Links = append(s.Links, fleetapi.Link{Name: ml.link.Name, Listen: ml.link.Listen, Peer: ml.peer, Faults: ml.link.Faults()})
	}
	if m.cmd != nil && m.cmd.Process != nil && m.state != "stopped" {
		s.PID = m.cmd.Process.Pid
	}
	return s
}

// start launches the process; the caller holds no lock.
func (m *member) start() error {
	logf, err := os.OpenFile(filepath.Join(m.dir, m.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.argv[0], m.argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), m.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	exited := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.state, m.startedAt, m.exited = cmd, "running", time.Now(), exited
	m.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		m.mu.Lock()
		m.lastExit = fmt.Sprint(err)
		if err == nil {
			m.lastExit = "exit status 0"
		}
		m.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Backoff of restarts: base doubling per quick crash up to cap; a member that
// ran longer than stableAfter starts again from base.
const (
	restartBase = 500 * time.Millisecond
	restartCap  = 10 * time.Second
	stableAfter = 30 * time.Second
)

// restartDelay is the wait before restart number attempt (0-based) of a member
// that crashed quickly: base x 2^attempt, capped.
func restartDelay(attempt int) time.Duration {
	return min(restartCap, restartBase<<min(attempt, 10))
}

// supervise restarts m whenever it exits, until ctx ends or the fleet stops.
// With restart off it reports the first exit on exited and returns.
func (m *member) supervise(ctx context.Context, restart bool, out io.Writer, exited chan<- string) {
	attempt := 0
	for {
		m.mu.Lock()
		done := m.exited
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-done:
		}
		m.mu.Lock()
		stopping, now, ran, why := m.stopping, m.now, time.Since(m.startedAt), m.lastExit
		m.now = false
		if stopping {
			m.state = "stopped"
			m.mu.Unlock()
			return
		}
		if !restart {
			m.state = "stopped"
			m.mu.Unlock()
			exited <- m.name
			return
		}
		m.state = "restarting"
		m.mu.Unlock()
		if ran > stableAfter {
			attempt = 0
		}
		d := restartDelay(attempt)
		if now {
			d = 0
		} else {
			attempt++
		}
		fmt.Fprintf(out, "%s  %s exited (%s); restarting in %v\n", time.Now().Format("15:04:05"), m.name, why, d)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if err := m.start(); err != nil {
			fmt.Fprintf(out, "%s  %s: %v; retrying\n", time.Now().Format("15:04:05"), m.name, err)
			m.mu.Lock()
			// Leave a closed channel so the loop waits the next backoff.
			c := make(chan struct{})
			close(c)
			m.exited = c
			m.mu.Unlock()
			continue
		}
		m.mu.Lock()
		m.restarts++
		m.mu.Unlock()
	}
}

// signal sends sig to the member's process group.
func (m *member) signal(sig syscall.Signal) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil || m.state == "stopped" || m.state == "restarting" {
		return fmt.Errorf("%s is not running (%s)", m.name, m.state)
	}
	switch sig {
	case syscall.SIGSTOP:
		m.state = "paused"
	case syscall.SIGCONT:
		m.state = "running"
	}
	return syscall.Kill(-m.cmd.Process.Pid, sig)
}

// stop ends the member for good (fleet shutdown): SIGTERM, then SIGKILL after grace.
func (m *member) stop(grace time.Duration) {
	m.mu.Lock()
	m.stopping = true
	cmd, done, state := m.cmd, m.exited, m.state
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	if state == "paused" {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	m.mu.Lock()
	m.state = "stopped"
	m.mu.Unlock()
}
