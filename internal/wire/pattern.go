package wire

import (
	"fmt"
	"strings"
)

// Patterns is a list of event patterns, as device tokens (claim evs) and named
// producer tokens carry them: each is an event id ("fight-2026-11-15") or a
// prefix ending in '*' ("fight-*"; a lone "*" matches every event). A nil
// Patterns matches every event; an empty, non-nil one matches none.
type Patterns []string

// CheckPatterns validates every pattern: an id, or a (possibly empty) id prefix
// followed by '*'. At most 64 patterns.
func CheckPatterns(ps []string) error {
	if len(ps) > 64 {
		return fmt.Errorf("%d event patterns, at most 64 allowed", len(ps))
	}
	for _, p := range ps {
		prefix, wild := strings.CutSuffix(p, "*")
		switch {
		case wild && prefix == "":
		case wild && validPrefix(prefix):
		case !wild && ValidID(p):
		default:
			return fmt.Errorf("event pattern %q is neither an event id nor an id prefix ending in *", truncate(p, 64))
		}
	}
	return nil
}

// validPrefix reports whether s can start a valid id.
func validPrefix(s string) bool {
	if len(s) >= MaxIDLen {
		return false
	}
	return ValidID(s)
}

// Match reports whether event matches any pattern (or ps is nil).
func (ps Patterns) Match(event string) bool {
	if ps == nil {
		return true
	}
	for _, p := range ps {
		if prefix, wild := strings.CutSuffix(p, "*"); wild {
			if strings.HasPrefix(event, prefix) {
				return true
			}
		} else if p == event {
			return true
		}
	}
	return false
}
