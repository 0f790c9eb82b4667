// Package broadcaster is stagecast's producer API: it validates and authorizes
// stage changes, de-duplicates retries by Idempotency-Key, has the engine assign
// the version and publish atomically, and serves the current stage and the merged
// delivery report. A circuit breaker guards the engine: when it is down producers
// get a clear 503 at once and nothing is half written (a stage change is a single
// atomic engine step).
//
// Concurrency: a Server is safe for concurrent use by many HTTP requests. The
// breakers and the producers' rate limiters have their own locks; no lock is
// held across an engine call.
//
// The package is the server of `stagecast broadcaster` and `stagecast dev`;
// its signatures name internal types (the engine's), so it is not an API for
// other modules. Producers' programs use package producer (its own types,
// nothing internal), whose types this server answers with.
package broadcaster
