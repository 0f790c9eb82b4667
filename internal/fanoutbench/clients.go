// Package fanoutbench measures stagecast's fanout on loopback with real
// processes: Redis, the stagecast broadcaster and proxies, and client processes
// holding the device connections. It also measures the floor: a plain program
// writing the same bytes with one write per connection over raw TCP. See
// docs/benchmarks.md for what it reports and how to read it.
//
// One binary plays every role (cmd/fanoutbench): the coordinator, client
// processes (WebSocket or raw TCP), and the floor server. Processes talk over
// stdin/stdout in JSON lines.
package fanoutbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/wire"
)

// maxVersions bounds the versions a client process tracks.
const maxVersions = 256

// msg is one line between processes.
type msg struct {
	Type   string `json:"type"` // ready, done, cpu, error
	V      uint64 `json:"v,omitempty"`
	Count  int64  `json:"count,omitempty"`
	LastNS int64  `json:"last_ns,omitempty"`
	CPUNS  int64  `json:"cpu_ns,omitempty"`
	Err    string `json:"err,omitempty"`
}

// tracker counts, per version, the connections that received it. Versions are
// large numbers (the engine's clock), so each new one takes the next slot; the
// lookup scans the few slots in use (a broadcast run has tens of versions).
type tracker struct {
	n      int64
	slots  [maxVersions]versionSlot
	nslots atomic.Int32
	mu     sync.Mutex  // serializes adding a slot
	ready  atomic.Bool // "ready" was sent: later versions report "done"
	out    *json.Encoder
	outMu  sync.Mutex
}

type versionSlot struct {
	v     atomic.Uint64
	count atomic.Int64
	last  atomic.Int64
}

// slot returns v's slot, adding it when new (nil past maxVersions).
func (t *tracker) slot(v uint64) *versionSlot {
	n := int(t.nslots.Load())
	for i := 0; i < n; i++ {
		if t.slots[i].v.Load() == v {
			return &t.slots[i]
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n = int(t.nslots.Load())
	for i := 0; i < n; i++ {
		if t.slots[i].v.Load() == v {
			return &t.slots[i]
		}
	}
	if n == maxVersions {
		return nil
	}
	t.slots[n].v.Store(v)
	t.nslots.Store(int32(n + 1))
	return &t.slots[n]
}

// caughtUp is the number of connections holding the first version seen (the
// catch-up every WebSocket client gets right after its sub).
func (t *tracker) caughtUp() int64 {
	if t.nslots.Load() == 0 {
		return 0
	}
	return t.slots[0].count.Load()
}

func (t *tracker) emit(m msg) {
	t.outMu.Lock()
	defer t.outMu.Unlock()
	_ = t.out.Encode(m)
}

// record notes that one connection received version v now.
func (t *tracker) record(v uint64) {
	s := t.slot(v)
	if v == 0 || s == nil {
		return
	}
	now := time.Now().UnixNano()
	for {
		old := s.last.Load()
		if now <= old || s.last.CompareAndSwap(old, now) {
			break
		}
	}
	// The catch-up completes before "ready": "ready" covers it.
	if s.count.Add(1) == t.n && t.ready.Load() {
		t.emit(msg{Type: "done", V: v, Count: t.n, LastNS: s.last.Load()})
	}
}

// versionOf finds "v":N in a stage frame without decoding the JSON (clients must
// cost as little CPU as possible: they share the machine with the proxy).
func versionOf(b []byte) uint64 {
	i := bytes.Index(b, []byte(`"v":`))
	if i < 0 {
		return 0
	}
	var v uint64
	for _, c := range b[i+4:] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}

// ClientConfig configures one client process.
type ClientConfig struct {
	URL   string // ws://.../v1/ws, or host:port with Raw
	Raw   bool   // raw TCP (the floor) instead of WebSocket
	N     int
	Src   string // source IP, e.g. 127.0.0.2
	Event string
	// Coder uses coder/websocket clients instead of the minimal reader. The
	// minimal reader (handshake by hand, frames parsed in place) costs about what
	// the floor's raw reader costs, so the clients steal less CPU from the proxy
	// they share the machine with.
	Coder bool
}

// RunClients holds cfg.N connections and reports on stdout: "ready" once every
// connection is established (and, for WebSocket, has caught up on version 1),
// "done" per version when every connection has it, "cpu" when stdin closes.
func RunClients(ctx context.Context, cfg ClientConfig) error {
	t := &tracker{n: int64(cfg.N), out: json.NewEncoder(os.Stdout)}
	dialer := device.Dialer(cfg.Src)
	var established atomic.Int64
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	for i := 0; i < cfg.N; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var err error
			switch {
			case cfg.Raw:
				err = rawClient(ctx, dialer, cfg.URL, t, &established, sem)
			case cfg.Coder:
				err = wsClient(ctx, hc, cfg, i, t, &established, sem)
			default:
				err = minimalWSClient(ctx, dialer, cfg, i, t, &established, sem)
			}
			if err != nil && ctx.Err() == nil {
				select {
				case errc <- err:
				default:
				}
			}
		}(i)
	}
	// Ready: every connection up (raw) or every connection on the current
	// version (WebSocket catch-up).
	deadline := time.After(120 * time.Second)
	for {
		up := established.Load() == int64(cfg.N)
		if up && (cfg.Raw || t.caughtUp() == int64(cfg.N)) {
			break
		}
		select {
		case err := <-errc:
			t.emit(msg{Type: "error", Err: err.Error()})
			return err
		case <-deadline:
			err := fmt.Errorf("clients: %d of %d connected, %d caught up after 120s", established.Load(), cfg.N, t.caughtUp())
			t.emit(msg{Type: "error", Err: err.Error()})
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.ready.Store(true)
	t.emit(msg{Type: "ready", Count: int64(cfg.N)})
	// Wait for the coordinator to close stdin, then report our CPU.
	_, _ = bufio.NewReader(os.Stdin).ReadString(0)
	t.emit(msg{Type: "cpu", CPUNS: selfCPU()})
	return nil
}

func wsClient(ctx context.Context, hc *http.Client, cfg ClientConfig, i int, t *tracker, established *atomic.Int64, sem chan struct{}) error {
	u := cfg.URL + "?device=b" + strconv.Itoa(i) + "&platform=tv"
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: hc})
	<-sem
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w", cfg.URL, cfg.Src, err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, wire.AppendSub(nil, map[string]uint64{cfg.Event: 0})); err != nil {
		return err
	}
	established.Add(1)
	stop := context.AfterFunc(ctx, func() { ws.CloseNow() })
	defer stop()
	if err := readVersions(ws, t.record); ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "connection %d ended: %v\n", i, err)
	}
	return nil
}

// readVersions reads ws until a read fails (the caller closes ws to stop it)
// and returns that error. It passes each message's version to record, and
// makes no garbage per message:
//   - one buffer per connection, reused for every message: ws.Read would
//     io.ReadAll each message into a fresh slice;
//   - reads under context.Background(), as the proxy's reader does: for a
//     context that can be cancelled, coder/websocket registers a
//     context.AfterFunc on every frame read (about 150 bytes each).
//
// At 10,000 connections x 20 broadcasts, that garbage made this process
// collect (90 ms of wall time, its CPU in assists) during one broadcast and
// made that broadcast look slow (docs/benchmarks.md, issue 22 session 10).
func readVersions(ws *websocket.Conn, record func(uint64)) error {
	ctx := context.Background()
	var frame bytes.Buffer
	frame.Grow(1024)
	for {
		_, r, err := ws.Reader(ctx)
		if err != nil {
			return err
		}
		frame.Reset()
		if _, err := frame.ReadFrom(r); err != nil {
			return err
		}
		record(versionOf(frame.Bytes()))
	}
}

// minimalWSClient speaks just enough WebSocket for the benchmark: the handshake,
// one masked sub frame, then reading unmasked server frames (answering pings).
func minimalWSClient(ctx context.Context, d *net.Dialer, cfg ClientConfig, i int, t *tracker, established *atomic.Int64, sem chan struct{}) error {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		<-sem
		return err
	}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		<-sem
		return fmt.Errorf("dial %s from %s: %w", u.Host, cfg.Src, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	req := "GET " + u.Path + "?device=b" + strconv.Itoa(i) + "&platform=tv HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	br := bufio.NewReaderSize(c, 512)
	_, err = c.Write([]byte(req))
	if err == nil {
		var status string
		if status, err = br.ReadString('\n'); err == nil && !strings.Contains(status, " 101 ") {
			err = fmt.Errorf("handshake: %s", strings.TrimSpace(status))
		}
		for err == nil {
			var line string
			if line, err = br.ReadString('\n'); line == "\r\n" {
				break
			}
		}
	}
	<-sem
	if err != nil {
		return fmt.Errorf("handshake with %s: %w", u.Host, err)
	}
	if err := writeMasked(c, 0x1, wire.AppendSub(nil, map[string]uint64{cfg.Event: 0})); err != nil {
		return err
	}
	established.Add(1)
	var hdr [8]byte
	buf := make([]byte, 256)
	for {
		if _, err := io.ReadFull(br, hdr[:2]); err != nil {
			return nil
		}
		n := int(hdr[1] & 0x7f)
		switch n {
		case 126:
			if _, err := io.ReadFull(br, hdr[:2]); err != nil {
				return nil
			}
			n = int(binary.BigEndian.Uint16(hdr[:2]))
		case 127:
			if _, err := io.ReadFull(br, hdr[:8]); err != nil {
				return nil
			}
			n = int(binary.BigEndian.Uint64(hdr[:8]))
		}
		if n > len(buf) {
			buf = make([]byte, n)
		}
		op := hdr[0] & 0x0f
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			return nil
		}
		switch op {
		case 0x1:
			t.record(versionOf(buf[:n]))
		case 0x8:
			return nil
		case 0x9:
			if err := writeMasked(c, 0xA, buf[:n]); err != nil {
				return nil
			}
		}
	}
}

// writeMasked writes one client frame (mask key 0, so the payload goes as is).
func writeMasked(w io.Writer, op byte, p []byte) error {
	if len(p) > 125 {
		return errors.New("frame too long for the minimal client")
	}
	_, err := w.Write(append([]byte{0x80 | op, 0x80 | byte(len(p)), 0, 0, 0, 0}, p...))
	return err
}

func rawClient(ctx context.Context, d *net.Dialer, addr string, t *tracker, established *atomic.Int64, sem chan struct{}) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	<-sem
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	established.Add(1)
	br := bufio.NewReaderSize(c, 512)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil
		}
		t.record(versionOf(line))
	}
}

// selfCPU is this process's user+system CPU time.
func selfCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// RunFloorServer accepts n raw TCP connections on addr, then for each line
// "send V" on stdin writes the stage frame of version V (plus '\n') to every
// connection, one write each, from one goroutine; "cpu" lines report its CPU.
func RunFloorServer(addr string, n int, event string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().String())
	conns := make([]net.Conn, 0, n)
	for len(conns) < n {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(msg{Type: "ready", Count: int64(n)})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var v uint64
		if _, err := fmt.Sscanf(sc.Text(), "send %d", &v); err != nil {
			_ = out.Encode(msg{Type: "cpu", CPUNS: selfCPU()})
			continue
		}
		st := wire.Stage{Event: event, Key: "round-" + strconv.FormatUint(v, 10), V: v, TS: time.Now().UnixMilli()}
		frame := append(wire.AppendStage(nil, &st), '\n')
		for _, c := range conns {
			_, _ = c.Write(frame)
		}
	}
	return nil
}
