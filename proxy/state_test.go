package proxy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestConnStateOnlyForward: a connection's state never goes back, and only
// open and closing take offers and writes.
func TestConnStateOnlyForward(t *testing.T) {
	all := []connState{connOpen, connClosing, connDead, connGone}
	for _, from := range all {
		for _, next := range all {
			got := from.to(next)
			if got < from || got < next {
				t.Errorf("%v.to(%v) = %v: went back", from, next, got)
			}
		}
	}
	for s, live := range map[connState]bool{connOpen: true, connClosing: true, connDead: false, connGone: false} {
		if s.live() != live {
			t.Errorf("%v.live() = %v", s, !live)
		}
	}
}

// TestCloseReasonFits: a close reason is cut to what a close frame carries,
// never in the middle of a character.
func TestCloseReasonFits(t *testing.T) {
	long := "unauthorized: " + strings.Repeat("é", 100)
	got := closeReason(long)
	if len(got) > maxCloseReason || !utf8.ValidString(got) || !strings.HasPrefix(long, got) {
		t.Fatalf("closeReason gave %d bytes %q", len(got), got)
	}
	if closeReason("short") != "short" {
		t.Fatal("a short reason changed")
	}
}
