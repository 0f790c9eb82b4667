package proxy

// connState is where a connection is in its life (conn.state, under conn.mu).
// It only moves forward (to never goes back):
//
//	connOpen ──sendControl(close status)──▶ connClosing ──writer drained──▶ closeWith ──▶ connGone
//	connOpen, connClosing ──kill (a write failed or timed out, a flood)──▶ connDead ──reader unregisters──▶ connGone
//	any ──unregister (close, abort, the reader's exit)──▶ connGone
//
// In connOpen and connClosing the conn takes offers and its writer writes
// (closing: the writer closes with conn.closeCode once the mailbox is
// drained, so the frames before the close, e.g. a reconnect hint, go out
// first). In connDead and connGone nothing more is offered or written;
// connGone also means removed from every topic and from the server, once.
type connState uint8

const (
	connOpen connState = iota
	connClosing
	connDead
	connGone
)

// live reports whether the conn still takes offers and writes.
func (s connState) live() bool { return s <= connClosing }

// to returns the later of s and next: a transition never goes back.
func (s connState) to(next connState) connState { return max(s, next) }

func (s connState) String() string {
	switch s {
	case connOpen:
		return "open"
	case connClosing:
		return "closing"
	case connDead:
		return "dead"
	case connGone:
		return "gone"
	}
	return "connState(?)"
}
