package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/proxy"
)

// TestCatchUpAtScale: the stage is set before any device connects; 2,000 devices
// then connect at once (creating the proxies' topics under concurrent subscribes)
// and every one must catch up on the current stage.
func TestCatchUpAtScale(t *testing.T) {
	const n, event = 2000, "late-joiners"
	f := startFleet(t, 3, redistest.Options{}, proxy.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := f.set(ctx, event, "round-5")
	devs := f.startDevices(ctx, n, event, -1)
	eventually(t, 60*time.Second, "every late joiner caught up", func() bool { return allOn(devs, event, r.V) })
}
