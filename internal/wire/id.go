package wire

import "fmt"

// MaxIDLen is the longest event or stage id: [a-z0-9][a-z0-9._-]{0,127}.
const MaxIDLen = 128

// ValidID reports whether s matches [a-z0-9][a-z0-9._-]{0,127}, the grammar of
// event ids, stage keys, platforms and segments.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// CheckID returns a descriptive error when s is not a valid id; what names the
// field ("event", "stage", ...).
func CheckID(what, s string) error {
	if ValidID(s) {
		return nil
	}
	if s == "" {
		return fmt.Errorf("%s id is empty", what)
	}
	if len(s) > MaxIDLen {
		return fmt.Errorf("%s id is %d bytes, at most %d allowed", what, len(s), MaxIDLen)
	}
	return fmt.Errorf("%s id %q does not match [a-z0-9][a-z0-9._-]{0,127}", what, truncate(s, 64))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
