package memengine

import (
	"context"
	"slices"

	"github.com/stagecast/stagecast/internal/engine"
)

// Events lists up to limit events, the most recently changed first.
func (m *Engine) Events(ctx context.Context, limit int) ([]engine.EventSummary, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []engine.EventSummary
	for name, e := range m.events {
		if len(e.log) == 0 && e.stageMap == nil {
			continue
		}
		s := engine.EventSummary{Event: name, Live: e.live, HasMap: e.stageMap != nil, UpdatedMS: e.updatedMS}
		if len(e.log) > 0 {
			cur := e.log[len(e.log)-1]
			s.Current = &cur
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b engine.EventSummary) int {
		if a.UpdatedMS != b.UpdatedMS {
			return int(b.UpdatedMS - a.UpdatedMS)
		}
		return cmpString(a.Event, b.Event)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// PutAudit adds an entry to the event's audit trail (newest MaxAudit kept).
func (m *Engine) PutAudit(ctx context.Context, event string, a engine.AuditEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.event(event)
	e.audit = append(e.audit, a)
	if len(e.audit) > engine.MaxAudit {
		e.audit = append(e.audit[:0], e.audit[len(e.audit)-engine.MaxAudit:]...)
	}
	return nil
}

// Audit returns up to n of the event's audit entries, newest first.
func (m *Engine) Audit(ctx context.Context, event string, n int) ([]engine.AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return nil, nil
	}
	out := make([]engine.AuditEntry, 0, min(n, len(e.audit)))
	for i := len(e.audit) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, e.audit[i])
	}
	return out, nil
}
