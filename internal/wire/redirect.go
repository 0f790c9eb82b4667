package wire

import (
	"net/url"
	"path"
	"strings"
)

// RedirectAllowed reports whether a device connected at current may follow a
// directed drain's "to" (hardening #10). The target must be a ws or wss URL
// with a host; never wss -> ws; and its host must be allowed: with allow
// empty, the host of one of the device's own proxy URLs (configured) or a
// subdomain of one; otherwise a host matching one of allow's patterns
// (path.Match, e.g. "*.proxies.example.com"). A "to" that fails is ignored:
// the device reconnects through its own list, as after any drain.
func RedirectAllowed(current, to string, configured, allow []string) bool {
	u, err := url.Parse(to)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Hostname() == "" || u.User != nil {
		return false
	}
	if cur, err := url.Parse(current); err != nil || (cur.Scheme == "wss" && u.Scheme != "wss") {
		return false
	}
	host := strings.ToLower(u.Hostname())
	if len(allow) > 0 {
		return hostMatches(host, allow)
	}
	for _, c := range configured {
		cu, err := url.Parse(c)
		if err != nil || cu.Hostname() == "" {
			continue
		}
		own := strings.ToLower(cu.Hostname())
		if host == own || strings.HasSuffix(host, "."+own) {
			return true
		}
	}
	return false
}

// DrainTargetAllowed reports whether a proxy may send its devices to target
// (another proxy's published URL): a ws/wss URL whose host matches one of
// patterns (path.Match; none: any host), never from a wss proxy to ws.
func DrainTargetAllowed(own, target string, patterns []string) bool {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Hostname() == "" || u.User != nil {
		return false
	}
	if o, err := url.Parse(own); err == nil && o.Scheme == "wss" && u.Scheme != "wss" {
		return false
	}
	return len(patterns) == 0 || hostMatches(strings.ToLower(u.Hostname()), patterns)
}

// hostMatches reports whether host (lower case) matches one of patterns.
func hostMatches(host string, patterns []string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(strings.ToLower(p), host); ok {
			return true
		}
	}
	return false
}
