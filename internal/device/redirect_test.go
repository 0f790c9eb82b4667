package device_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/internal/wire"
)

// A directed drain's "to" sends the device to that proxy once; a "to" that is
// not a ws/wss URL, or names a host the device was not configured with, is
// ignored (the device keeps its own list).
func TestReconnectTo(t *testing.T) {
	for _, tc := range []struct {
		name   string
		to     func(target string) string
		wantTo bool
	}{
		{"ws URL followed", func(target string) string { return target }, true},
		{"http URL ignored", func(target string) string { return strings.Replace(target, "ws://", "http://", 1) }, false},
		// hardening #10: only hosts of the device's own proxy URLs (or an allow list)
		{"another host ignored", func(target string) string { return strings.Replace(target, "127.0.0.1", "localhost", 1) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var targetHits atomic.Int64
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				targetHits.Add(1)
				c, err := websocket.Accept(w, r, nil)
				if err == nil {
					c.CloseNow()
				}
			}))
			defer target.Close()
			targetURL := "ws" + strings.TrimPrefix(target.URL, "http") + "/v1/ws"
			draining := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				_ = c.Write(r.Context(), websocket.MessageText, wire.AppendReconnectTo(nil, 0, tc.to(targetURL)))
				_ = c.Close(websocket.StatusCode(wire.CloseServiceRestart), "draining")
			}))
			defer draining.Close()
			own := "ws" + strings.TrimPrefix(draining.URL, "http") + "/v1/ws"
			d, err := device.New(device.Config{URLs: []string{own}, BackoffBase: 10 * time.Millisecond, BackoffCap: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = d.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitfor.True(t, 5*time.Second, "two reconnect frames honoured", func() bool { return d.Reconnects.Load() >= 2 })
			if got := targetHits.Load() > 0; got != tc.wantTo {
				t.Fatalf("device went to the named proxy: %v, want %v", got, tc.wantTo)
			}
		})
	}
}
