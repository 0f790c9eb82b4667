package broadcaster_test

import (
	"context"
	"fmt"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/internal/wire"
)

// A producer's tool changes the stage of an event, for TV devices only, with an
// Idempotency-Key so a retry after a timeout makes no second version.
func ExampleClient_SetStage() {
	c := &broadcaster.Client{BaseURL: "http://127.0.0.1:8081", Token: "the-producer-token"}
	r, err := c.SetStage(context.Background(), "fight-2026-11-15", "round-3",
		&wire.Target{Platforms: []string{"tv"}}, "producer-console-7f3a")
	if err != nil {
		fmt.Println("not changed:", err)
		return
	}
	fmt.Printf("v%d at %d\n", r.V, r.TS)
}
