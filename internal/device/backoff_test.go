package device

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffWindow(t *testing.T) {
	base, cap := 500*time.Millisecond, 30*time.Second
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for k, w := range want {
		if got := BackoffWindow(k, base, cap); got != w {
			t.Errorf("window(%d) = %v, want %v", k, got, w)
		}
	}
	if BackoffWindow(1000, base, cap) != cap || BackoffWindow(-1, base, cap) != base {
		t.Fatal("window does not clamp")
	}
	if Backoff(3, base, cap, 0) != 0 || Backoff(3, base, cap, 0.5) != 2*time.Second {
		t.Fatal("Backoff is not u * window")
	}
}

// TestFullJitterUniform: draws over attempt k's window are uniform on
// [0, window): chi-square over 20 bins, no bin far from its share.
func TestFullJitterUniform(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, bins = 200000, 20
	w := BackoffWindow(4, 500*time.Millisecond, 30*time.Second)
	var counts [bins]int
	for i := 0; i < n; i++ {
		d := Backoff(4, 500*time.Millisecond, 30*time.Second, r.Float64())
		if d < 0 || d >= w {
			t.Fatalf("draw %v outside [0, %v)", d, w)
		}
		counts[int(float64(d)/float64(w)*bins)]++
	}
	exp := float64(n) / bins
	chi := 0.0
	for _, c := range counts {
		chi += (float64(c) - exp) * (float64(c) - exp) / exp
	}
	// 19 degrees of freedom: p = 0.001 at 43.8.
	if chi > 43.8 || math.IsNaN(chi) {
		t.Fatalf("chi-square %.1f over %d bins: not uniform (%v)", chi, bins, counts)
	}
}

// TestRunReconnectsWithInjectedSleep: Run asks the injected Sleep for full-jitter
// backoffs on failures, with no real waiting.
func TestRunReconnectsWithInjectedSleep(t *testing.T) {
	var sleeps []time.Duration
	stop := errStop{}
	c, err := New(Config{URLs: []string{"ws://127.0.0.1:1/v1/ws"}, BackoffBase: time.Second, BackoffCap: 8 * time.Second,
		Rand: rand.New(rand.NewPCG(3, 4)),
		Sleep: func(_ context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			if len(sleeps) == 6 {
				return stop
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); err != stop {
		t.Fatalf("Run = %v", err)
	}
	for k, d := range sleeps {
		if w := BackoffWindow(k, time.Second, 8*time.Second); d < 0 || d >= w {
			t.Fatalf("sleep %d = %v, outside [0, %v)", k, d, w)
		}
	}
}

type errStop struct{}

func (errStop) Error() string { return "stop" }

// TestBackoffLongOutage: after many failed attempts (a long outage) the window
// stays at the cap; base<<k once overflowed past k = 34 and went negative,
// which made every retry immediate.
func TestBackoffLongOutage(t *testing.T) {
	for k := 0; k < 1000; k++ {
		w := BackoffWindow(k, 500*time.Millisecond, 30*time.Second)
		if w <= 0 || w > 30*time.Second {
			t.Fatalf("BackoffWindow(%d) = %v, want within (0, 30s]", k, w)
		}
		if k >= 6 && w != 30*time.Second {
			t.Fatalf("BackoffWindow(%d) = %v, want the cap", k, w)
		}
	}
}
