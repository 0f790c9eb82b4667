package localcluster

import (
	"testing"
	"time"
)

func TestRestartDelay(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i, w := range want {
		if got := restartDelay(i); got != w {
			t.Errorf("restartDelay(%d) = %v, want %v", i, got, w)
		}
	}
	if got := restartDelay(1000); got != restartCap {
		t.Errorf("restartDelay(1000) = %v, want the cap", got)
	}
}
