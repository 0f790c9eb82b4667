package proxy

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestNoSkewWarningAtStart (hardening #14): a clock within the budget at start
// is the normal case and logs no warning (make run warned at every start, with
// a skew of 30 ns).
func TestNoSkewWarningAtStart(t *testing.T) {
	var logs syncBuffer
	s, err := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))},
		memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	waitfor.True(t, 10*time.Second, "the first skew measurement", func() bool {
		return strings.Contains(logs.String(), "clock skew against the engine within the budget")
	})
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") {
			t.Fatalf("a warning at a normal start: %s", line)
		}
	}
}
