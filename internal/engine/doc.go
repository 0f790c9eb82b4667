// Package engine holds what stagecast's two engines share: the request and report
// types, the errors and the bounds. The engines are package memengine (in
// memory: the one `make run` embeds) and package redisengine.
//
// An engine stores each event's version counter, current stage and a bounded log
// of recent stage changes; assigns versions atomically; publishes each change to
// every subscribed proxy; and keeps the delivery aggregates proxies report. The
// Redis engine (package redisengine) does the same across processes; both pass the
// conformance suite in package enginetest.
//
// Consumers (proxy, broadcaster) declare the small interface they need where they
// use it; this package declares none.
//
// Concurrency: every method of either engine may be called from any goroutine.
// Subscribe handlers are called from the engine's goroutines and must not block:
// push to a queue and return.
package engine
