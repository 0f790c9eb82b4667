package e2e

import (
	"io"
	"log/slog"
	"os"
	"testing"
)

// TestMain silences the servers' logs (expected errors while Redis is killed
// would bury a real failure); STAGECAST_TEST_LOG=1 shows them.
func TestMain(m *testing.M) {
	if os.Getenv("STAGECAST_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	os.Exit(m.Run())
}
