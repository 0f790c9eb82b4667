package engine

import (
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
