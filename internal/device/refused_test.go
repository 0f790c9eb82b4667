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

// A refused upgrade (503 or 429) with a Retry-After is retried after it, as
// the contract says, not after the device's own (shorter) backoff; a refusal
// without one, and any other failure, keeps the backoff. A connect storm's
// refused devices then come back when the proxy asked them to, not in a
// doubling stampede.
func TestRefusalRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		after    string
		minGapMS int64
	}{
		{"503 Retry-After 1", http.StatusServiceUnavailable, "1", 900},
		{"429 Retry-After 1", http.StatusTooManyRequests, "1", 900},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var dials []time.Time
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				dials = append(dials, time.Now())
				n := len(dials)
				mu.Unlock()
				if n == 1 {
					w.Header().Set("Retry-After", tc.after)
					http.Error(w, "over the admission rate", tc.status)
					return
				}
				c, err := websocket.Accept(w, r, nil)
				if err == nil {
					defer c.CloseNow()
					<-r.Context().Done()
				}
			}))
			defer srv.Close()
			d, err := device.New(device.Config{URLs: []string{"ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws"},
				BackoffBase: 10 * time.Millisecond, BackoffCap: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = d.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitfor.True(t, 10*time.Second, "connected after the refusal", d.Connected)
			mu.Lock()
			defer mu.Unlock()
			if gap := dials[1].Sub(dials[0]).Milliseconds(); gap < tc.minGapMS {
				t.Fatalf("retried %d ms after a refusal with Retry-After %s s (the backoff is 10-20 ms)", gap, tc.after)
			}
		})
	}
	// Without Retry-After: the backoff (10-20 ms here), not a second.
	var mu sync.Mutex
	var dials []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		dials = append(dials, time.Now())
		n := len(dials)
		mu.Unlock()
		if n < 3 {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			defer c.CloseNow()
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	d, err := device.New(device.Config{URLs: []string{"ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws"},
		BackoffBase: 10 * time.Millisecond, BackoffCap: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitfor.True(t, 3*time.Second, "connected after two refusals without Retry-After (the backoff, never a default wait)", d.Connected)
}
