// Package redistest starts real redis-server processes for tests: on a free
// loopback port, in a temporary directory, stopped in t.Cleanup. Never a mock.
//
// Tests fail (they do not skip) when redis-server is missing: `make test`
// installs it (Debian package redis-server).
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options tune a server. The zero value persists nothing.
type Options struct {
	// AppendOnly turns AOF on (in the test's temp dir, removed at the end) so a
	// Restart keeps the data, as a production Redis with AOF would.
	AppendOnly bool
	// Extra arguments for redis-server.
	Args []string
	// TLS serves TLS only (no plain TCP) with a throw-away CA (CAFile) and a
	// certificate for 127.0.0.1.
	TLS bool
}

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	opts Options
	dir  string
	Port int

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts a redis-server on a free 127.0.0.1 port and registers its stop.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: run `make test`, which installs it (apt-get install redis-server): %v", err)
	}
	_ = bin
	s := &Server{t: t, opts: opts, dir: t.TempDir()}
	if opts.TLS {
		if err := writeTLSFiles(s.dir); err != nil {
			t.Fatal(err)
		}
	}
	var lastErr error
	for try := 0; try < 5; try++ {
		s.Port = freePort(t)
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("redistest: could not start redis-server: %v", lastErr)
	return nil
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

func (s *Server) args() []string {
	a := []string{"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(s.dir, "redis.log")}
	if s.opts.AppendOnly {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		a = append(a, "--appendonly", "no")
	}
	if s.opts.TLS {
		a = append(a, tlsArgs(s.dir, s.Port)...)
	}
	return append(a, s.opts.Args...)
}

// ping checks the server answers, over TLS when it serves TLS.
func (s *Server) ping() error {
	if s.opts.TLS {
		return pingTLS(s.Addr(), s.dir)
	}
	return Ping(s.Addr())
}

func (s *Server) start() error {
	cmd := exec.Command("redis-server", s.args()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server on port %d exited: %v: %s %s", s.Port, err, out.String(), lastLines(string(log), 5))
		default:
		}
		if s.ping() == nil {
			s.mu.Lock()
			s.cmd = cmd
			s.mu.Unlock()
			go func() { <-exited }() // reap
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return fmt.Errorf("redis-server on port %d did not answer PING within 10s", s.Port)
}

// Kill stops the server abruptly (SIGKILL), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && s.ping() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// Restart starts the server again on the same port (after Kill).
func (s *Server) Restart() {
	s.t.Helper()
	var err error
	for try := 0; try < 50; try++ { // the port may linger briefly
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redistest: restart: %v", err)
}

// Stop kills the server if it runs.
func (s *Server) Stop() { s.Kill() }

// Ping sends a RESP PING to addr and waits for +PONG.
func Ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	return ping(c)
}

func ping(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "+PONG") {
		return fmt.Errorf("unexpected reply %q", buf[:n])
	}
	return nil
}

// Cli runs redis-cli against the server (for faults injected from outside the
// client under test, e.g. CLIENT KILL).
func (s *Server) Cli(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-p", strconv.Itoa(s.Port)}, args...)...).CombinedOutput()
	return string(out), err
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
