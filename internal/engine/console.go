package engine

import (
	"context"
	"slices"

	"github.com/stagecast/stagecast/internal/wire"
)

// What the producer console reads besides the producer API's own data: the
// events an engine holds (newest activity first) and each event's audit trail.

// MaxIndexedEvents bounds the event index: the least recently changed events
// beyond it are dropped from the list (not from the engine).
const MaxIndexedEvents = 10000

// MaxAudit is how many audit entries an event keeps.
const MaxAudit = 100

// EventSummary is one event of the list.
type EventSummary struct {
	Event     string      `json:"event"`
	Current   *wire.Stage `json:"current,omitempty"`
	Live      bool        `json:"live"`
	HasMap    bool        `json:"has_map"`
	UpdatedMS int64       `json:"updated"` // the last stage change or map store
}

// AuditEntry is one producer action on an event.
type AuditEntry struct {
	AtMS     int64  `json:"at"`
	Producer string `json:"producer"`
	Action   string `json:"action"` // set_stage, put_stage_map, set_window
	Stage    string `json:"stage,omitempty"`
	V        uint64 `json:"v,omitempty"`
	Result   string `json:"result"` // created, replayed, stored, error
	Detail   string `json:"detail,omitempty"`
}

// Events lists up to limit events, the most recently changed first.
func (m *Memory) Events(ctx context.Context, limit int) ([]EventSummary, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []EventSummary
	for name, e := range m.events {
		if len(e.log) == 0 && e.stageMap == nil {
			continue
		}
		s := EventSummary{Event: name, Live: e.live, HasMap: e.stageMap != nil, UpdatedMS: e.updatedMS}
		if len(e.log) > 0 {
			cur := e.log[len(e.log)-1]
			s.Current = &cur
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b EventSummary) int {
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
func (m *Memory) PutAudit(ctx context.Context, event string, a AuditEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.event(event)
	e.audit = append(e.audit, a)
	if len(e.audit) > MaxAudit {
		e.audit = append(e.audit[:0], e.audit[len(e.audit)-MaxAudit:]...)
	}
	return nil
}

// Audit returns up to n of the event's audit entries, newest first.
func (m *Memory) Audit(ctx context.Context, event string, n int) ([]AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events[event]
	if e == nil {
		return nil, nil
	}
	out := make([]AuditEntry, 0, min(n, len(e.audit)))
	for i := len(e.audit) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, e.audit[i])
	}
	return out, nil
}
