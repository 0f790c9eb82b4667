package wire

import "testing"

func TestRedirectAllowed(t *testing.T) {
	own := []string{"wss://edge.example.com/v1/ws", "ws://127.0.0.1:8080/v1/ws"}
	for _, tc := range []struct {
		current, to string
		allow       []string
		want        bool
	}{
		{"wss://edge.example.com/v1/ws", "wss://edge.example.com/v1/ws", nil, true},
		{"wss://edge.example.com/v1/ws", "wss://p7.edge.example.com/v1/ws", nil, true},
		{"wss://edge.example.com/v1/ws", "ws://p7.edge.example.com/v1/ws", nil, false}, // never wss -> ws
		{"wss://edge.example.com/v1/ws", "wss://evil.example.net/v1/ws", nil, false},
		{"wss://edge.example.com/v1/ws", "wss://notedge.example.com/v1/ws", nil, false},
		{"wss://edge.example.com/v1/ws", "wss://user:pw@edge.example.com/v1/ws", nil, false},
		{"wss://edge.example.com/v1/ws", "https://edge.example.com/v1/ws", nil, false},
		{"ws://127.0.0.1:8080/v1/ws", "ws://127.0.0.1:9101/v1/ws", nil, true},
		{"ws://127.0.0.1:8080/v1/ws", "ws://localhost:9101/v1/ws", nil, false},
		{"wss://edge.example.com/v1/ws", "wss://p1.proxies.example.org/v1/ws", []string{"*.proxies.example.org"}, true},
		{"wss://edge.example.com/v1/ws", "wss://edge.example.com/v1/ws", []string{"*.proxies.example.org"}, false},
	} {
		if got := RedirectAllowed(tc.current, tc.to, own, tc.allow); got != tc.want {
			t.Errorf("RedirectAllowed(%s -> %s, allow %v) = %v, want %v", tc.current, tc.to, tc.allow, got, tc.want)
		}
	}
	for _, tc := range []struct {
		own, target string
		patterns    []string
		want        bool
	}{
		{"ws://a:1/v1/ws", "ws://b:2/v1/ws", nil, true},
		{"wss://a/v1/ws", "ws://b/v1/ws", nil, false},
		{"wss://a.px.example.com/v1/ws", "wss://b.px.example.com/v1/ws", []string{"*.px.example.com"}, true},
		{"wss://a.px.example.com/v1/ws", "wss://attacker.example.net/v1/ws", []string{"*.px.example.com"}, false},
		{"ws://a/v1/ws", "http://b/v1/ws", nil, false},
	} {
		if got := DrainTargetAllowed(tc.own, tc.target, tc.patterns); got != tc.want {
			t.Errorf("DrainTargetAllowed(%s -> %s, %v) = %v, want %v", tc.own, tc.target, tc.patterns, got, tc.want)
		}
	}
}
