package filewatch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/waitfor"
)

func TestPollAppliesChangesAndKeepsOldOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var applied []string
	refused := 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	Watch(ctx, path, 5*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), func(b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if string(b) == "bad" {
			refused++
			return errors.New("bad")
		}
		if len(b) == 0 { // a parser refuses a torn (empty) read
			return errors.New("empty")
		}
		applied = append(applied, string(b))
		return nil
	})
	got := func() ([]string, int) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), applied...), refused
	}
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("two!")
	waitfor.True(t, 5*time.Second, "applied two!", func() bool { a, _ := got(); return len(a) == 1 && a[0] == "two!" })
	// The refused file is seen (apply is called with it) and the previous
	// configuration stays: nothing is applied.
	write("bad")
	waitfor.True(t, 5*time.Second, "the bad file offered to apply", func() bool { _, r := got(); return r >= 1 })
	if a, _ := got(); len(a) != 1 || a[0] != "two!" {
		t.Fatalf("after a refused file: applied %q, want still only two!", a)
	}
	// And the next good file is still picked up.
	write("three")
	waitfor.True(t, 5*time.Second, "applied three", func() bool { a, _ := got(); return len(a) == 2 && a[1] == "three" })
}
