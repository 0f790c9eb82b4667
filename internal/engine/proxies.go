package engine

// ProxyLoad is what each proxy publishes about itself every report interval,
// so a draining proxy can direct its devices (directed drain).
type ProxyLoad struct {
	ID          string  `json:"id"`
	URL         string  `json:"url"` // where devices reach it (ws:// or wss://); "" = not a drain target
	Connections int64   `json:"conns"`
	Capacity    int64   `json:"cap"`   // MaxConnections
	AdmitRate   float64 `json:"admit"` // new connections per second it admits
	Draining    bool    `json:"draining,omitempty"`
	// Tier is "" for a proxy, "prefetch" for a prefetch server, which reports
	// Shedding: 0 none, 1 normal work shed lately, 2 critical work shed lately.
	Tier     string `json:"tier,omitempty"`
	Shedding int    `json:"shedding,omitempty"`
	AtMS     int64  `json:"at"`
}

// ProxyLoadTTL: loads older than this are ignored (the proxy is gone).
const ProxyLoadTTL = 10_000 // ms
