package engine

import (
	"context"
	"slices"
	"strings"
)

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

// PutProxyLoad stores a proxy's load.
func (m *Memory) PutProxyLoad(ctx context.Context, l ProxyLoad) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loads == nil {
		m.loads = map[string]ProxyLoad{}
	}
	m.loads[l.ID] = l
	return nil
}

// ProxyLoads returns every proxy's load reported within ProxyLoadTTL of nowMS.
func (m *Memory) ProxyLoads(ctx context.Context, nowMS int64) ([]ProxyLoad, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ProxyLoad
	for id, l := range m.loads {
		if nowMS-l.AtMS > ProxyLoadTTL || l.AtMS-nowMS > ProxyLoadTTL { // from the future: it would never age out
			delete(m.loads, id)
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b ProxyLoad) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
