package loadgen

import (
	"context"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
)

// setStageRetrying makes a stage change through the public producer client,
// retrying a failure with the same Idempotency-Key (a 503 outcome_unknown
// while a Redis master fails over) for up to within: one version, however
// many tries.
func setStageRetrying(ctx context.Context, bc *producer.Client, event, stage, idem string, paced bool, within time.Duration) (producer.StageReply, error) {
	deadline := time.Now().Add(within)
	for {
		r, err := bc.SetStageWith(ctx, event, producer.StageRequest{Stage: stage, Paced: paced}, idem)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
