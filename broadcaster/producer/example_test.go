package producer_test

import (
	"context"
	"fmt"

	"github.com/stagecast/stagecast/broadcaster/producer"
)

// A producer's tool changes the stage of an event, for TV devices only, with an
// Idempotency-Key so a retry after a timeout makes no second version.
func ExampleClient_SetStage() {
	c := &producer.Client{BaseURL: "http://127.0.0.1:8081", Token: "the-producer-token"}
	r, err := c.SetStage(context.Background(), "fight-2026-11-15", "round-3",
		&producer.Target{Platforms: []string{"tv"}}, "producer-console-7f3a")
	if err != nil {
		fmt.Println("not changed:", err)
		return
	}
	fmt.Printf("v%d at %d\n", r.V, r.TS)
}

// A notification to two members, high priority, replacing any unread one
// with the same dedup key.
func ExampleClient_Notify() {
	c := &producer.Client{BaseURL: "http://127.0.0.1:8081", Token: "the-producer-token"}
	r, err := c.Notify(context.Background(), producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1", "m2"}},
		Type: "score", Priority: "high", Payload: []byte(`{"home":2,"away":1}`), DedupKey: "score"}, "score-2-1")
	if err != nil {
		fmt.Println("not sent:", err)
		return
	}
	fmt.Printf("%s stored in %d inboxes\n", r.ID, r.Stored)
}
