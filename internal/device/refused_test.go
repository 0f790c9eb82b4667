package device_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/waitfor"
)

// refusing is a proxy that refuses the first refusals upgrades with status
// (and Retry-After after, when set), then accepts; it records each dial.
type refusing struct {
	mu    sync.Mutex
	dials []time.Time
}

func (rf *refusing) serve(t *testing.T, refusals, status int, after string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rf.mu.Lock()
		rf.dials = append(rf.dials, time.Now())
		n := len(rf.dials)
		rf.mu.Unlock()
		if n <= refusals {
			if after != "" {
				w.Header().Set("Retry-After", after)
			}
			http.Error(w, "over the admission rate", status)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			defer c.CloseNow()
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws"
}

// runDevice runs a device with a 10-20 ms backoff against url until the test
// ends.
func runDevice(t *testing.T, url string) *device.Client {
	d, err := device.New(device.Config{URLs: []string{url}, BackoffBase: 10 * time.Millisecond, BackoffCap: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// A refused upgrade (503 or 429) with a Retry-After is retried after it, as
// the contract says, not after the device's own (shorter) backoff; a refusal
// without one keeps the backoff. A connect storm's refused devices then come
// back when the proxy asked them to, not in a doubling stampede.
func TestRefusalRetryAfter(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			rf := &refusing{}
			d := runDevice(t, rf.serve(t, 1, status, "1"))
			waitfor.True(t, 10*time.Second, "connected after the refusal", d.Connected)
			rf.mu.Lock()
			defer rf.mu.Unlock()
			if gap := rf.dials[1].Sub(rf.dials[0]); gap < 900*time.Millisecond {
				t.Fatalf("retried %v after a refusal with Retry-After 1 s (the backoff is 10-20 ms)", gap)
			}
		})
	}
	t.Run("no Retry-After", func(t *testing.T) {
		rf := &refusing{}
		d := runDevice(t, rf.serve(t, 2, http.StatusServiceUnavailable, ""))
		waitfor.True(t, 3*time.Second, "connected after two refusals without Retry-After (the backoff, never a default wait)", d.Connected)
	})
}
