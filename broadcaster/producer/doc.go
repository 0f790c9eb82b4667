// Package producer is the Go client of stagecast's producer API (the
// broadcaster's HTTP API, docs/protocol.md): stage changes, stage maps, live
// windows, schedules, notifications and their reports. It is the module's
// public Go API for producers, with its own types: it imports nothing of the
// servers and no internal package, so any program can use it. The
// `stagecast stage` and `stagecast notify` commands, the load generator and
// the benchmarks use it; the broadcaster answers with these same types.
//
// A Client is safe for concurrent use. Every call takes a context; an error
// reply of the API is an *APIError with its status and wire code:
//
//	c := &producer.Client{BaseURL: "http://127.0.0.1:8081", Token: token}
//	st, err := c.SetStage(ctx, "fight-2026-11-15", "round-3", nil, "round-3-once")
//	var apiErr *producer.APIError
//	if errors.As(err, &apiErr) && apiErr.Code == "outcome_unknown" {
//		// retry with the same Idempotency-Key
//	}
package producer
