package memengine

import (
	"context"
	"slices"
	"strings"

	"github.com/stagecast/stagecast/internal/engine"
)

// PutProxyLoad stores a proxy's load.
func (m *Engine) PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loads == nil {
		m.loads = map[string]engine.ProxyLoad{}
	}
	m.loads[l.ID] = l
	return nil
}

// ProxyLoads returns every proxy's load reported within ProxyLoadTTL of nowMS.
func (m *Engine) ProxyLoads(ctx context.Context, nowMS int64) ([]engine.ProxyLoad, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []engine.ProxyLoad
	for id, l := range m.loads {
		if nowMS-l.AtMS > engine.ProxyLoadTTL || l.AtMS-nowMS > engine.ProxyLoadTTL { // from the future: it would never age out
			delete(m.loads, id)
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b engine.ProxyLoad) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
