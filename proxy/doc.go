// Package proxy is stagecast's WebSocket tier: it holds device connections,
// keeps one engine subscription per event (never one per device), and fans each
// stage change out to every matching device, encoded once.
//
// # Flow
//
// engine message -> topic inbox -> topic goroutine: insert into the event's
// history, encode the frame once -> for each subscribed conn: put the frame in the
// conn's mailbox (one slot per event: the latest version wins) -> if the conn was
// idle, hand it to the shared writer pool -> a writer drains the mailbox with a
// write deadline -> device.
//
// # Admission (what a device must pass, in order)
//
// Upgrade: drain state, query syntax, per-IP admission rate, capacity and the
// proxy's admission rate, then the device token (a signature check costs ~60 us,
// so admission bounds it), then a reserved place (MaxConnections and
// MaxConnsPerIP are counted under connsMu before the handshake, so concurrent
// upgrades cannot overshoot). Sub, per event: the token's evs, the per-connection
// subscribe budget, existence (cached; engine lookups bounded by LookupRate and
// done off the frame handlers), then, under the hub's locks, MaxSubscriptions and
// MaxEvents. A topic is created only after all of it, and is swept if its first
// device left before it was added.
//
// # Concurrency invariants
//
//   - writerPool.qmu is a leaf: push and pop take nothing under it, so it may be
//     taken with any other lock held (conn.mu -> writerPool.qmu is allowed);
//     noteHub.mu -> conn.mu; noteHub.rmu (the resync queue) and noteHub.cmu
//     (report counts) are leaves too.
//   - Lock order: topic mu -> conn mu. A hub shard's mu is held only for its map
//     (lookup, create, delete) and may take a topic's mu inside (the sweep) but is
//     never held while waiting for a topic's mu by a subscribe: subscribe looks the
//     topic up, releases the shard, then locks the topic and retries if the sweep
//     removed it meanwhile. connsMu is taken alone. Never take them the other way.
//   - Fanout copies a topic's subscriber list under its read lock and offers
//     without it, so subscribe, unsubscribe and ack never wait for a fanout.
//   - Writers never take a topic or hub lock: a writer whose write fails moves
//     the conn to connDead and drops its TCP connection (kill); the conn's reader
//     then unregisters it (connGone). A conn's life is one state (state.go) that
//     only moves forward. The writer queue is a FIFO that push never blocks on.
//   - A conn's WebSocket writes have one owner at a time: the writer goroutine that
//     took it off the pool queue (conn.queued is true from enqueue until that writer
//     finds the mailbox empty). Nothing else writes data frames to it. Pings and the
//     close handshake go through coder/websocket's own frame lock.
//   - A conn is in the writer queue at most once while it is queued or being
//     written; the queue never blocks the fanout: the broadcaster never waits on a
//     device.
//   - Each conn has exactly one long-lived goroutine, its reader (it answers pongs
//     and reads sub/unsub/ack). It hands each frame to a frame-handler goroutine
//     (2 x GOMAXPROCS of them) and waits for the answer, so frames apply in order
//     and the reader's stack never grows past its initial size. A sub that needs
//     engine lookups moves from the frame handler to a goroutine of its own; the
//     reader still waits, so at most one goroutine processes a conn's frames at a
//     time, and the conn's budget fields (subWin, errWin, errored) are touched by
//     that one only. Pings come from one ping wheel for the whole proxy
//     (pinger.go: one ticker, no timer per conn, at most one ping in flight
//     per conn) and the token's expiry from a runtime timer, each in a
//     short-lived goroutine; writes borrow a pool goroutine.
//   - Closing with a close frame (drain, 4001, 4003, 1008) unregisters the conn
//     first, then does the handshake in a goroutine holding one of maxClosing
//     slots; with no slot free the TCP connection is dropped instead.
//   - A conn's fields other than mu-guarded ones (ws, timers, identity) are set
//     before publish puts it in Server.conns, under connsMu.
//   - Each topic has two goroutines: run (owns history updates and fanout, fed by
//     its inbox) and the engine subscription; history re-reads run in a third,
//     short-lived one (at most one at a time) that reports back to run, so a slow
//     or failing engine never stops live fanout. They exit when the topic is removed.
//   - The engine's subscription callbacks only push to the topic inbox; they never block.
//
// The package is the server of `stagecast proxy` (and `stagecast dev`); its
// signatures name internal types, so it is not an API for other modules: they
// speak the protocol (docs/protocol.md) or use package broadcaster/producer.
package proxy
