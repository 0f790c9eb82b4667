// Package notifybench measures notifications on loopback (make bench-notify):
// a real Redis, a broadcaster, two proxies and a prefetch server as separate
// stagecast processes, devices in client processes, and producers in the
// coordinator. It finds the highest steady rate with nothing lost and p99 from
// POST to device within budget, measures critical latency under a flood of low
// notes, Redis memory per stored note and inbox pulls per second.
package notifybench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/wire"
)

// ClientConfig is one client process: devices From..From+N-1. Device i is
// "d<i>" of member "m<i/2>" and connects to proxy i%len(URLs), so each member
// has two devices on two proxies.
type ClientConfig struct {
	URLs    []string
	From, N int
	KeyPath string // device signing key (stagecast token keygen)
}

// clientReport is what a client process prints on "report".
type clientReport struct {
	Type      string                                     `json:"type"`
	Connected int64                                      `json:"connected"`
	Received  [wire.NumPriorities]int64                  `json:"received"`
	Hist      [wire.NumPriorities]*hdrhistogram.Snapshot `json:"hist"`
	Err       string                                     `json:"err,omitempty"`
}

type recorder struct {
	mu       sync.Mutex
	hist     [wire.NumPriorities]*hdrhistogram.Histogram // microseconds, POST start -> note read
	received [wire.NumPriorities]int64
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 120_000_000, 3) }

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range r.hist {
		r.hist[p] = newHist()
		r.received[p] = 0
	}
}

func (r *recorder) note(f wire.ProxyFrame, at time.Time) {
	p, err := wire.ParsePriority(f.Priority)
	if err != nil {
		return
	}
	var body struct {
		T int64 `json:"t"`
	}
	_ = json.Unmarshal(f.Payload, &body)
	lat := at.Sub(time.Unix(0, body.T)).Microseconds()
	r.mu.Lock()
	r.received[p]++
	if body.T > 0 {
		_ = r.hist[p].RecordValue(max(lat, 1))
	}
	r.mu.Unlock()
}

// RunClients connects the devices, prints {"type":"ready"} once all are
// connected, then answers "report" and "reset" lines on stdin until it closes.
func RunClients(ctx context.Context, cfg ClientConfig) error {
	signer, err := devicetoken.LoadSigner(cfg.KeyPath)
	if err != nil {
		return err
	}
	rec := &recorder{}
	rec.reset()
	out := json.NewEncoder(os.Stdout)
	var connected atomic.Int64
	devs := make([]*device.Client, cfg.N)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for k := range cfg.N {
		i := cfg.From + k
		tok, err := signer.Mint(devicetoken.Claims{Device: "d" + strconv.Itoa(i), Member: "m" + strconv.Itoa(i/2)}, 6*time.Hour)
		if err != nil {
			return err
		}
		d, err := device.New(device.Config{URLs: []string{cfg.URLs[i%len(cfg.URLs)]}, Token: tok, Notes: true,
			BackoffBase: 200 * time.Millisecond, BackoffCap: 5 * time.Second, OnNote: rec.note})
		if err != nil {
			return err
		}
		devs[k] = d
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(ctx) }()
		if k%200 == 199 {
			time.Sleep(20 * time.Millisecond) // pace the connects: 10k/s
		}
	}
	count := func() int64 {
		n := int64(0)
		for _, d := range devs {
			if d.Connected() {
				n++
			}
		}
		connected.Store(n)
		return n
	}
	for deadline := time.Now().Add(2 * time.Minute); count() < int64(cfg.N); {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d devices connected", connected.Load(), cfg.N)
		}
		time.Sleep(100 * time.Millisecond) // polling the devices' state
	}
	_ = out.Encode(map[string]any{"type": "ready", "connected": connected.Load()})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "reset":
			rec.reset()
			_ = out.Encode(map[string]any{"type": "reset"})
		case "report":
			rep := clientReport{Type: "report", Connected: count()}
			rec.mu.Lock()
			rep.Received = rec.received
			for p := range rec.hist {
				rep.Hist[p] = rec.hist[p].Export()
			}
			rec.mu.Unlock()
			_ = out.Encode(rep)
		}
	}
	return nil
}
