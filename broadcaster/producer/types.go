package producer

import "encoding/json"

// Target narrows a stage change to some devices: a device matches when its
// platform is in Platforms (if any) and its segment in Segments (if any).
type Target struct {
	Platforms []string `json:"platforms,omitempty"`
	Segments  []string `json:"segments,omitempty"`
}

// StageRequest is the body of POST /v1/events/{event}/stage.
type StageRequest struct {
	Stage  string  `json:"stage"`
	Target *Target `json:"target,omitempty"`
	// Priority (extension): "critical" makes proxies write this change before
	// other frames (notes, other events' stages); "" or "normal" otherwise.
	Priority string `json:"priority,omitempty"`
	// Paced (extension): proxies release the change in waves at their
	// --paced-rate, slower while the prefetch tier sheds; for a stage devices
	// do not hold, so their fetches do not come at once.
	Paced bool `json:"paced,omitempty"`
}

// StageReply is an event's stage: the reply of a stage change and of GET
// /v1/events/{event}.
type StageReply struct {
	Event  string  `json:"event"`
	Stage  string  `json:"stage"`
	V      uint64  `json:"v"`
	TS     int64   `json:"ts"`
	Target *Target `json:"target,omitempty"`
}

// Report is the delivery report of one version (GET /v1/events/{event}/report).
type Report struct {
	Event string `json:"event"`
	V     uint64 `json:"v"`
	Stage string `json:"stage,omitempty"`
	TS    int64  `json:"ts,omitempty"`
	// Devices subscribed to the event now (proxies that reported recently).
	Devices int64  `json:"devices"`
	Sent    uint64 `json:"sent"`
	Acked   uint64 `json:"acked"`
	// SentPct and AckedPct are of max(devices, sent).
	SentPct  float64 `json:"sent_pct"`
	AckedPct float64 `json:"acked_pct"`
	// SentMS: time from ts until 50/90/99/100 % of the devices had been sent the
	// version (upper bound of the histogram bucket); null while not reached.
	SentMS       map[string]*int64 `json:"sent_ms"`
	Proxies      int               `json:"proxies"`
	StaleProxies int               `json:"stale_proxies"`
	// PerProxy (extension) is each proxy's share, for the console.
	PerProxy []ProxyReport `json:"per_proxy"`
}

// ProxyReport is one proxy's share of a Report.
type ProxyReport struct {
	Proxy   string            `json:"proxy"`
	Devices int64             `json:"devices"`
	Sent    uint64            `json:"sent"`
	Acked   uint64            `json:"acked"`
	Stale   bool              `json:"stale,omitempty"`
	SentMS  map[string]*int64 `json:"sent_ms"`
}

// MapReply is the reply of PUT /v1/events/{event}/stages.
type MapReply struct {
	Event     string `json:"event"`
	Version   uint64 `json:"version"`
	Stages    int    `json:"stages"`
	Bytes     int    `json:"bytes"`
	UpdatedMS int64  `json:"updated"`
}

// StoredMap is GET /v1/events/{event}/stages: the map as stored.
type StoredMap struct {
	Event     string          `json:"event"`
	Version   uint64          `json:"version"`
	UpdatedMS int64           `json:"updated"`
	Map       json.RawMessage `json:"map"`
}

// WindowRequest is the body of PUT /v1/events/{event}/window.
type WindowRequest struct {
	Live *bool `json:"live"`
}

// ScheduleRequest is the body of POST /v1/events/{event}/schedule: a stage
// change armed for At (Unix ms).
type ScheduleRequest struct {
	Stage    string  `json:"stage"`
	At       int64   `json:"at"` // Unix ms
	Target   *Target `json:"target,omitempty"`
	Priority string  `json:"priority,omitempty"`
}

// ScheduleReply is an armed schedule.
type ScheduleReply struct {
	ID     string  `json:"id"`
	Event  string  `json:"event"`
	Stage  string  `json:"stage"`
	V      uint64  `json:"v"`
	At     int64   `json:"at"`
	Target *Target `json:"target,omitempty"`
	State  string  `json:"state"` // armed, cancelled
}

// NotifyRequest is the body of POST /v1/notifications.
type NotifyRequest struct {
	To         NotifyTargets   `json:"to"`
	Type       string          `json:"type"`
	Priority   string          `json:"priority,omitempty"`
	Payload    json.RawMessage `json:"payload,omitempty"`
	DedupKey   string          `json:"dedup_key,omitempty"`
	TTLSeconds int64           `json:"ttl_seconds,omitempty"`
}

// NotifyTargets are a notification's recipients.
type NotifyTargets struct {
	Members []string `json:"members,omitempty"`
	Devices []string `json:"devices,omitempty"`
}

// NotifyReply is the reply of POST /v1/notifications.
type NotifyReply struct {
	ID       string `json:"id"`
	Members  int    `json:"members"`
	Devices  int    `json:"devices"`
	Priority string `json:"priority"`
	Stored   int    `json:"stored"` // inbox copies stored
	Pushes   int    `json:"pushes"` // proxy registrations pushed to
	Replayed bool   `json:"replayed,omitempty"`
}

// NoteReport is a notification's delivery report
// (GET /v1/notifications/{id}/report).
type NoteReport struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Priority  string `json:"priority"`
	CreatedMS int64  `json:"created"`
	Members   int    `json:"members"`
	Devices   int    `json:"devices"`
	// Sent: note frames written to devices; Acked: device acks. A device may be
	// sent a note twice (over a reconnect), so Sent can exceed the devices.
	Sent  uint64 `json:"sent"`
	Acked uint64 `json:"acked"`
	// Per target inbox: Pending holds the note unread, Read has it marked read,
	// Gone no longer holds it (expired, trimmed, or replaced by a later note
	// with the same dedup_key).
	Pending int `json:"pending"`
	Read    int `json:"read"`
	Gone    int `json:"gone"`
}

// BatchNote is one notification of a batch (POST /v1/notifications:batch)
// with its own Idempotency-Key ("" for none).
type BatchNote struct {
	IdempotencyKey string        `json:"idempotency_key,omitempty"`
	Notification   NotifyRequest `json:"notification"`
}

// BatchReply answers a batch: one result per notification, in the order sent.
type BatchReply struct {
	Results []BatchResult `json:"results"`
}

// BatchResult is one notification's outcome: Status 202 with its Reply, or
// the status and the error the single endpoint would have answered.
type BatchResult struct {
	Status int          `json:"status"`
	Reply  *NotifyReply `json:"reply,omitempty"`
	Error  *APIError    `json:"error,omitempty"`
}
