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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	Watch(ctx, path, 5*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), func(b []byte) error {
		if string(b) == "bad" || len(b) == 0 { // a parser refuses a torn (empty) read
			return errors.New("bad")
		}
		mu.Lock()
		applied = append(applied, string(b))
		mu.Unlock()
		return nil
	})
	got := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), applied...) }
	for _, content := range []string{"two!", "bad", "three"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if content == "bad" {
			continue // refused by apply; the next good file must still be picked up
		}
		want := content
		waitfor.True(t, 5*time.Second, "applied "+want, func() bool { a := got(); return len(a) > 0 && a[len(a)-1] == want })
	}
	if a := got(); len(a) != 2 {
		t.Fatalf("applied %q, want two!, three", a)
	}
}
