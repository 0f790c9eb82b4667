// Package device is a stagecast device client, as a TV or phone app would
// implement one: it connects to a proxy over WebSocket, subscribes to events with
// the last version it holds, keeps the highest version per event, acks, honours
// the proxy's reconnect hint, and reconnects with capped exponential backoff and
// full jitter. Tests and the load generator use it, so they speak to the proxy
// exactly as devices do.
//
// Concurrency: Run owns the connection (one reader goroutine); State, Connected
// and the counters may be called from any goroutine. Callbacks run on Run's
// goroutine and must not block for long.
package device
