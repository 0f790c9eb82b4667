// Package waitfor is the tests' way to wait: poll a condition with a deadline
// instead of sleeping a guessed time (as nats-server's checkFor does).
package waitfor

import (
	"testing"
	"time"
)

// True polls cond every 5 ms until it holds, failing t after d.
func True(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}
