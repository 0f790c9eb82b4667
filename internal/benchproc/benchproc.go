// Package benchproc runs the processes of a loopback benchmark (Redis, stagecast
// servers, client processes): start with a log file, talk over stdin/stdout
// JSON lines, stop gracefully, and read a process's CPU and memory from /proc.
package benchproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Proc is one child process. Its stderr goes to <logDir>/<name>.log; its stdout
// is read line by line with NextLine.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	In   io.WriteCloser
	out  *bufio.Scanner
}

// Start starts argv with env added to this process's environment.
func Start(name, logDir string, argv, env []string) (*Proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	lf, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = lf
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	return &Proc{Name: name, Cmd: cmd, In: in, out: sc}, nil
}

// Stop closes stdin, sends SIGINT, and kills the process after 10 s.
func (p *Proc) Stop() {
	_ = p.In.Close()
	_ = p.Cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-done
	}
}

// NextLine returns the next stdout line for which accept is true, within timeout.
func (p *Proc) NextLine(timeout time.Duration, accept func([]byte) bool) ([]byte, error) {
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		for p.out.Scan() {
			if b := p.out.Bytes(); accept(b) {
				ch <- res{b: append([]byte(nil), b...)}
				return
			}
		}
		ch <- res{err: fmt.Errorf("%s exited: %v", p.Name, p.out.Err())}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(timeout):
		return nil, fmt.Errorf("%s: no message within %v", p.Name, timeout)
	}
}

// FreeAddr returns a free 127.0.0.1 address.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// CPU returns user+system CPU of pid from /proc (clock ticks of 10ms).
func CPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// RSS returns VmRSS of pid in KiB.
func RSS(pid int) int64 {
	return kiBField(procLine("/proc/"+strconv.Itoa(pid)+"/status", "VmRSS:"))
}

// procLine returns the fields of the first line of the file at path that
// starts with prefix (nil: no file, no such line).
func procLine(path, prefix string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			return strings.Fields(line)
		}
	}
	return nil
}

// kiBField is a "Name: N kB" line's N (0 when absent).
func kiBField(f []string) int64 {
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n
}

// KernelTCPKiB returns the kernel's memory for TCP sockets in KiB: the "mem"
// pages of /proc/net/sockstat's TCP line (this network namespace, every
// socket of both ends on loopback), which a process's RSS does not show.
func KernelTCPKiB() int64 {
	f := procLine("/proc/net/sockstat", "TCP:")
	for i := 1; i+1 < len(f); i += 2 {
		if f[i] == "mem" {
			pages, _ := strconv.ParseInt(f[i+1], 10, 64)
			return pages * int64(os.Getpagesize()) / 1024
		}
	}
	return 0
}

// SlabKiB returns the kernel's slab memory in KiB (/proc/meminfo's Slab:):
// where socket, inode, file and epoll structures live. Its growth over a
// connect phase, halved for loopback (both ends are on this machine), is
// the kernel's own cost per socket, which sockstat's "mem" (buffered bytes
// only) leaves out.
func SlabKiB() int64 {
	return kiBField(procLine("/proc/meminfo", "Slab:"))
}

// StartRedis starts redis-server on a free loopback port, nothing persisted,
// and waits until it answers PING (ping checks an address).
func StartRedis(logDir string, ping func(addr string) error) (*Proc, string, error) {
	addr := FreeAddr()
	_, port, _ := net.SplitHostPort(addr)
	p, err := Start("redis", logDir, []string{"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", logDir}, nil)
	if err != nil {
		return nil, "", err
	}
	for i := 0; ping(addr) != nil; i++ {
		if i > 200 {
			p.Stop()
			return nil, "", errors.New("redis did not start")
		}
		time.Sleep(25 * time.Millisecond) // polling a starting process
	}
	return p, addr, nil
}
