// Package e2e holds stagecast's end-to-end tests of the broadcast phase: a real
// Redis (internal/redistest), a broadcaster and several proxies in-process on
// loopback port 0, and real WebSocket devices (internal/device). It has no
// non-test code besides this comment.
package e2e
