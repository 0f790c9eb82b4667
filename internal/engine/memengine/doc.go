// Package memengine is the in-memory engine: one process, no Redis, nothing
// survives a restart. `make run` (stagecast dev) embeds it, and tests use it
// where Redis is not what they test. It passes the same conformance suite as
// the Redis engine (package enginetest); the types it speaks are package
// engine's.
//
// Concurrency: every method may be called from any goroutine. It holds one
// mutex for events and one for notifications, and calls subscriber and push
// handlers with it held: they must not block (push to a queue and return).
package memengine
