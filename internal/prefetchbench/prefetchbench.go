// Package prefetchbench measures the prefetch API on cache hits: the plain JSON
// endpoint, GraphQL POST and GraphQL GET, side by side against one server
// process, with the load generator on the same machine (make bench-prefetch).
package prefetchbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/redistest"
)

// Config configures a run.
type Config struct {
	Stagecast   string        // the stagecast binary
	Duration    time.Duration // per endpoint; default 10s
	Concurrency int           // closed-loop workers; default 16
	Stages      int           // stages in the map; default 12
	PayloadSize int           // bytes per payload; default 300
	Log         io.Writer
	// DebugAddr, if set, is passed to the server as --debug-addr (pprof).
	DebugAddr string
	// Analytics streams the server's lookup counts to an in-process
	// Kafka-protocol broker (the dev server's kfake) during the run; off, the
	// dev server runs with --kafka-addr off.
	Analytics bool
}

// Result is one endpoint's figures.
type Result struct {
	Endpoint string  `json:"endpoint"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	RPS      float64 `json:"rps"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
	Bytes    int     `json:"response_bytes"`
}

const token = "prefetchbench-token-0123456789"

// Run starts `stagecast dev` on free ports, stores a stage map, and measures.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.Stages <= 0 {
		cfg.Stages = 12
	}
	if cfg.PayloadSize <= 0 {
		cfg.PayloadSize = 300
	}
	addr := func() string { return "127.0.0.1:" + fmt.Sprint(freePort()) }
	paddr, baddr, faddr := addr(), addr(), addr()
	args := []string{"dev", "--proxy-addr", paddr, "--broadcaster-addr", baddr, "--prefetch-addr", faddr, "--log-level", "warn", "--kafka-addr", "off"}
	if cfg.Analytics {
		args[len(args)-1] = addr()
	}
	if cfg.DebugAddr != "" {
		args = append(args, "--debug-addr", cfg.DebugAddr)
	}
	cmd := exec.CommandContext(ctx, cfg.Stagecast, args...)
	cmd.Env = append(os.Environ(), "STAGECAST_PRODUCER_TOKEN="+token)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	bc := &producer.Client{BaseURL: "http://" + baddr, Token: token}
	var b strings.Builder
	b.WriteString(`{"ttl_seconds":300,"stages":{`)
	for i := 0; i < cfg.Stages; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"stage-%02d":{"default":{"rows":"%s"},"segments":{"s1":{"rows":"%s"}}}`, i, strings.Repeat("d", cfg.PayloadSize), strings.Repeat("s", cfg.PayloadSize))
	}
	b.WriteString(`}}`)
	for i := 0; ; i++ {
		if _, err := bc.PutStageMap(ctx, "bench", []byte(b.String())); err == nil {
			break
		} else if i > 100 {
			return nil, fmt.Errorf("dev server not answering: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := bc.SetStage(ctx, "bench", "stage-03", nil, ""); err != nil {
		return nil, err
	}
	post, _ := json.Marshal(map[string]any{"query": device.PrefetchQuery, "operationName": "Prefetch", "variables": map[string]any{"event": "bench", "segment": "s1"}})
	getPath := "/graphql?" + url.Values{"query": {device.PrefetchQuery}, "operationName": {"Prefetch"}, "variables": {`{"event":"bench","segment":"s1"}`}}.Encode()
	endpoints := []struct {
		name string
		raw  []byte
	}{
		{"plain GET /v1/prefetch", []byte("GET /v1/prefetch/bench?segment=s1 HTTP/1.1\r\nHost: " + faddr + "\r\n\r\n")},
		{"GraphQL POST", []byte(fmt.Sprintf("POST /graphql HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", faddr, len(post), post))},
		{"GraphQL GET", []byte("GET " + getPath + " HTTP/1.1\r\nHost: " + faddr + "\r\n\r\n")},
	}
	var out []Result
	for _, ep := range endpoints {
		r, err := measure(ctx, ep.name, faddr, ep.raw, cfg)
		if err != nil {
			return out, err
		}
		out = append(out, r)
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%-24s %8.0f req/s  p50 %.2fms  p99 %.2fms  %d errors  %d B/response\n", r.Endpoint, r.RPS, r.P50MS, r.P99MS, r.Errors, r.Bytes)
		}
	}
	if cfg.Log != nil && len(out) == 3 {
		fmt.Fprintf(cfg.Log, "GraphQL POST / plain: %.2f   GraphQL GET / plain: %.2f\n", out[1].RPS/out[0].RPS, out[2].RPS/out[0].RPS)
	}
	return out, nil
}

// measure runs cfg.Concurrency closed-loop workers, each on one keep-alive
// connection with a minimal HTTP/1.1 client (pre-built request bytes,
// Content-Length framing): as little client CPU as possible on the shared cores.
func measure(ctx context.Context, name, addr string, raw []byte, cfg Config) (Result, error) {
	var mu sync.Mutex
	total := hdrhistogram.New(1, 10_000_000, 3) // microseconds
	var errs int64
	size := 0
	deadline := time.Now().Add(cfg.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, cfg.Concurrency)
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			br := bufio.NewReaderSize(c, 64<<10)
			h := hdrhistogram.New(1, 10_000_000, 3)
			var e int64
			n := 0
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if n, err = roundTrip(c, br, raw); err != nil {
					e++
					errc <- fmt.Errorf("%s: %w", name, err)
					break
				}
				_ = h.RecordValue(time.Since(t0).Microseconds())
			}
			mu.Lock()
			total.Merge(h)
			errs += e
			size = max(size, n)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errc:
		return Result{}, err
	default:
	}
	return Result{Endpoint: name, Requests: total.TotalCount(), Errors: errs, RPS: float64(total.TotalCount()) / el.Seconds(),
		P50MS: float64(total.ValueAtQuantile(50)) / 1000, P99MS: float64(total.ValueAtQuantile(99)) / 1000, Bytes: size}, nil
}

// roundTrip writes raw and reads one response; it returns the body size.
func roundTrip(c net.Conn, br *bufio.Reader, raw []byte) (int, error) {
	if _, err := c.Write(raw); err != nil {
		return 0, err
	}
	status, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200")) {
		return 0, fmt.Errorf("status %q", bytes.TrimSpace(status))
	}
	length := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			break
		}
		if len(line) > 16 && bytes.EqualFold(line[:15], []byte("Content-Length:")) {
			length, _ = strconv.Atoi(string(bytes.TrimSpace(line[15:])))
		}
	}
	if length < 0 {
		return 0, errors.New("response without Content-Length")
	}
	_, err = br.Discard(length)
	return length, err
}

func freePort() int {
	p, _ := redistest.FreePort()
	return p
}
