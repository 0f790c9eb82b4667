package broadcaster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine/memengine"
)

// TestBatchCostsItsNotes: a notification batch takes one token of the
// producer's rate limit per note, so batching does not multiply what a
// producer may send: with a burst of 20 (rate 10/s), a batch of 15 passes,
// the next one of 15 is refused whole with 429 and a Retry-After (nothing
// of it stored), and one of 25 can never pass: 413.
func TestBatchCostsItsNotes(t *testing.T) {
	_, url := serve(t, broadcaster.Config{Token: token, ProducerRate: 10, ProducerBurst: 20}, memengine.New(memengine.Config{}))
	c := &producer.Client{BaseURL: url, Token: token}
	ctx := context.Background()
	batch := func(n int, key string) []producer.BatchNote {
		b := make([]producer.BatchNote, n)
		for i := range b {
			b[i] = producer.BatchNote{IdempotencyKey: fmt.Sprintf("%s-%d", key, i),
				Notification: producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Payload: json.RawMessage(`{}`)}}
		}
		return b
	}
	res, err := c.NotifyBatch(ctx, batch(15, "first"))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != 202 {
			t.Fatalf("note %d: %+v", i, r)
		}
	}
	var ae *producer.APIError
	if _, err := c.NotifyBatch(ctx, batch(15, "second")); !errors.As(err, &ae) || ae.Status != 429 || ae.Code != "rate_limited" {
		t.Fatalf("a batch past the rate: %v, want 429 rate_limited", err)
	}
	// Nothing of the refused batch was stored: its first key is unused.
	res, err = c.NotifyBatch(ctx, batch(1, "second"))
	if err == nil && res[0].Reply != nil && res[0].Reply.Replayed {
		t.Fatal("a note of the refused batch was stored")
	}
	if _, err := c.NotifyBatch(ctx, batch(25, "third")); !errors.As(err, &ae) || ae.Status != 413 || ae.Code != "too_large" {
		t.Fatalf("a batch larger than the burst: %v, want 413 too_large", err)
	}
}
