// Package prefetch serves stage maps to devices ahead of the moment, without
// letting any clock line devices (or caches) up into a herd.
//
//   - Cache: a local LRU (hashicorp/golang-lru/v2) of event snapshots, each with its
//     own jittered expiry (expired lazily on Get), singleflight so N concurrent
//     misses for one event make one store read, a circuit breaker
//     (sony/gobreaker/v2) around the store, serve-stale when the store fails, and
//     short jittered negative caching of unknown events.
//   - Hints: the TTL and refresh hint of every response are jittered (JitteredTTL,
//     RefreshAfter: pure functions of a uniform draw, tested without clocks).
//   - Shedder: admission by priority. Live-event prefetch is critical and shed last.
//   - PlainHandler: the same data as plain JSON (GET /v1/prefetch/{event}), the
//     baseline the GraphQL face (package graph) is benchmarked against.
//
// prefetch knows nothing of GraphQL.
//
// Concurrency: Cache, Shedder and the handler are safe for concurrent use. An
// Entry is immutable once published. The random source is guarded by a mutex.
//
// The package is the server of `stagecast prefetch` (and `stagecast dev`); its
// signatures name internal types, so it is not an API for other modules: they
// speak the protocol (docs/protocol.md) or use package broadcaster/producer.
package prefetch
