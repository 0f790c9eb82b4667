package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Notification frames (contract v2, "Notifications").
const (
	OpNote  = "note"  // proxy -> device: one notification
	OpInbox = "inbox" // device -> proxy: resume the inboxes after a cursor
)

// Priority orders notifications (and critical events' stages): a higher value is
// written first, and the lowest is shed first under overload.
type Priority uint8

// Priorities, lowest first.
const (
	PriorityLow Priority = iota
	PriorityNormal
	PriorityHigh
	PriorityCritical
	NumPriorities = 4
)

var priorityNames = [NumPriorities]string{"low", "normal", "high", "critical"}

func (p Priority) String() string {
	if int(p) < len(priorityNames) {
		return priorityNames[p]
	}
	return "priority(" + strconv.Itoa(int(p)) + ")"
}

// ParsePriority parses a priority name; "" is normal (the contract's default).
func ParsePriority(s string) (Priority, error) {
	if s == "" {
		return PriorityNormal, nil
	}
	for i, n := range priorityNames {
		if n == s {
			return Priority(i), nil
		}
	}
	return 0, fmt.Errorf("priority %q is not one of critical, high, normal, low", truncate(s, 32))
}

// Limits of one notification request (the producer API answers 4xx above them).
const (
	MaxNoteTargets = 1000 // members + devices per request
	MaxNotePayload = 4096 // bytes of the payload's JSON
	MaxDedupKey    = 256  // bytes
	MaxRecipientID = 128  // bytes of a member or device id
	DefaultNoteTTL = 7 * 24 * time.Hour
	MaxNoteTTL     = 30 * 24 * time.Hour
	MaxNoteBody    = 16 * 1024 // bytes of a whole POST /v1/notifications body
)

// CheckRecipient checks a member or device id as a notification target: 1 to
// 128 bytes of printable ASCII without spaces or commas (ids travel in Redis keys
// and in newline-separated push messages).
func CheckRecipient(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s id is empty", what)
	}
	if len(s) > MaxRecipientID {
		return fmt.Errorf("%s id is %d bytes, at most %d allowed", what, len(s), MaxRecipientID)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == ',' {
			return fmt.Errorf("%s id %q: only printable ASCII without spaces or commas", what, truncate(s, 64))
		}
	}
	return nil
}

// Inbox kinds: a member's inbox (notes "to":{"members":[...]}) or a device's.
const (
	InboxMember byte = 'm'
	InboxDevice byte = 'd'
)

// Pos is a position in one inbox: a Redis stream id "<ms>-<seq>" (the memory
// engine uses the same form). Positions are ordered; the zero Pos is before
// every note.
type Pos struct{ MS, Seq uint64 }

func (p Pos) String() string {
	return strconv.FormatUint(p.MS, 10) + "-" + strconv.FormatUint(p.Seq, 10)
}

// IsZero reports whether p is before every note.
func (p Pos) IsZero() bool { return p == Pos{} }

// Less reports whether p is before q.
func (p Pos) Less(q Pos) bool { return p.MS < q.MS || (p.MS == q.MS && p.Seq < q.Seq) }

// ParsePos parses "<ms>-<seq>".
func ParsePos(s string) (Pos, error) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return Pos{}, fmt.Errorf("inbox position %q is not <ms>-<seq>", truncate(s, 48))
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return Pos{}, fmt.Errorf("inbox position %q is not <ms>-<seq>", truncate(s, 48))
	}
	return Pos{a, b}, nil
}

// Cursor names one note: its inbox kind and position, written "m<ms>-<seq>" or
// "d<ms>-<seq>". Devices treat it as opaque; it is ordered per inbox.
type Cursor struct {
	Kind byte
	Pos  Pos
}

func (c Cursor) String() string { return string(c.Kind) + c.Pos.String() }

// ParseCursor parses one note cursor.
func ParseCursor(s string) (Cursor, error) {
	if len(s) < 2 || (s[0] != InboxMember && s[0] != InboxDevice) {
		return Cursor{}, fmt.Errorf("cursor %q is not a note id", truncate(s, 48))
	}
	p, err := ParsePos(s[1:])
	if err != nil {
		return Cursor{}, fmt.Errorf("cursor %q: %w", truncate(s, 48), err)
	}
	return Cursor{Kind: s[0], Pos: p}, nil
}

// After is where a device resumes: per inbox kind, the last position it holds
// (absent: from the oldest kept note).
type After struct {
	Member, Device       Pos
	HasMember, HasDevice bool
}

// Get returns the position for kind (zero: from the oldest).
func (a After) Get(kind byte) Pos {
	if kind == InboxMember {
		return a.Member
	}
	return a.Device
}

// Set records p for kind.
func (a *After) Set(kind byte, p Pos) {
	if kind == InboxMember {
		a.Member, a.HasMember = p, true
	} else {
		a.Device, a.HasDevice = p, true
	}
}

// String writes the resume cursor: one note cursor per inbox kind, comma
// separated ("m1764316800123-0,d1764316800200-1"); "" when a has none.
func (a After) String() string {
	var b []byte
	if a.HasMember {
		b = append(b, Cursor{InboxMember, a.Member}.String()...)
	}
	if a.HasDevice {
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = append(b, Cursor{InboxDevice, a.Device}.String()...)
	}
	return string(b)
}

// ParseAfter parses a resume cursor: "" (from the oldest kept), one note id
// (that inbox after it, the other from its oldest), or one per kind, comma separated.
func ParseAfter(s string) (After, error) {
	var a After
	if s == "" {
		return a, nil
	}
	if len(s) > 96 {
		return a, fmt.Errorf("cursor is %d bytes, at most 96", len(s))
	}
	for _, part := range strings.Split(s, ",") {
		c, err := ParseCursor(part)
		if err != nil {
			return a, err
		}
		if (c.Kind == InboxMember && a.HasMember) || (c.Kind == InboxDevice && a.HasDevice) {
			return a, fmt.Errorf("cursor %q names one inbox twice", truncate(s, 48))
		}
		a.Set(c.Kind, c.Pos)
	}
	return a, nil
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

// Notification is a validated NotifyRequest.
type Notification struct {
	Members, Devices []string // distinct, in request order
	Type             string
	Priority         Priority
	Payload          json.RawMessage // "null" when absent
	DedupKey         string
	TTL              time.Duration
}

// ParseNotifyRequest decodes and validates a POST /v1/notifications body. Every
// error names the field and the limit.
// ErrTooLarge marks a request refused for its size (HTTP 413, not 400).
var ErrTooLarge = errors.New("too large")

func ParseNotifyRequest(b []byte) (Notification, error) {
	var n Notification
	if len(b) > MaxNoteBody {
		return n, fmt.Errorf("body is %d bytes, at most %d", len(b), MaxNoteBody)
	}
	if !utf8.Valid(b) {
		return n, fmt.Errorf("body is not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r NotifyRequest
	if err := dec.Decode(&r); err != nil {
		return n, fmt.Errorf("body: %v", err)
	}
	if err := CheckID("type", r.Type); err != nil {
		return n, err
	}
	p, err := ParsePriority(r.Priority)
	if err != nil {
		return n, err
	}
	if len(r.Payload) > MaxNotePayload {
		return n, fmt.Errorf("%w: payload is %d bytes, at most %d", ErrTooLarge, len(r.Payload), MaxNotePayload)
	}
	payload := json.RawMessage("null")
	if len(r.Payload) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, r.Payload); err != nil {
			return n, fmt.Errorf("payload: %v", err)
		}
		payload = buf.Bytes()
	}
	if len(r.DedupKey) > MaxDedupKey {
		return n, fmt.Errorf("dedup_key is %d bytes, at most %d", len(r.DedupKey), MaxDedupKey)
	}
	ttl := DefaultNoteTTL
	switch {
	case r.TTLSeconds < 0:
		return n, fmt.Errorf("ttl_seconds must be > 0")
	case r.TTLSeconds > int64(MaxNoteTTL/time.Second):
		return n, fmt.Errorf("ttl_seconds is %d, at most %d (30 days)", r.TTLSeconds, int64(MaxNoteTTL/time.Second))
	case r.TTLSeconds > 0:
		ttl = time.Duration(r.TTLSeconds) * time.Second
	}
	members, err := distinct("member", r.To.Members)
	if err != nil {
		return n, err
	}
	devices, err := distinct("device", r.To.Devices)
	if err != nil {
		return n, err
	}
	switch total := len(members) + len(devices); {
	case total == 0:
		return n, fmt.Errorf(`"to" names no member and no device`)
	case total > MaxNoteTargets:
		return n, fmt.Errorf(`"to" names %d targets, at most %d per request`, total, MaxNoteTargets)
	}
	return Notification{Members: members, Devices: devices, Type: r.Type, Priority: p,
		Payload: payload, DedupKey: r.DedupKey, TTL: ttl}, nil
}

func distinct(what string, ids []string) ([]string, error) {
	if len(ids) > MaxNoteTargets {
		return nil, fmt.Errorf(`"to" names %d %ss, at most %d per request`, len(ids), what, MaxNoteTargets)
	}
	seen := make(map[string]struct{}, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if err := CheckRecipient(what, id); err != nil {
			return nil, err
		}
		if _, dup := seen[id]; !dup {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out, nil
}

// AppendNoteBody appends what an inbox stores for a note and what follows the
// cursor in its frame: {"nid":...,"type":...,"priority":...,"payload":...,"ts":...}.
// nid and type must be valid ids; payload compact JSON.
func AppendNoteBody(dst []byte, nid string, n *Notification, tsMS int64) []byte {
	dst = append(dst, `{"nid":"`...)
	dst = append(dst, nid...)
	dst = append(dst, `","type":"`...)
	dst = append(dst, n.Type...)
	dst = append(dst, `","priority":"`...)
	dst = append(dst, n.Priority.String()...)
	dst = append(dst, `","payload":`...)
	dst = append(dst, n.Payload...)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, tsMS, 10)
	return append(dst, '}')
}

// AppendNote appends a note frame: {"op":"note","id":<cursor>, <body fields>,
// "resume":<resume>}. body is an AppendNoteBody object.
func AppendNote(dst []byte, id Cursor, body []byte, resume string) []byte {
	dst = append(dst, `{"op":"note","id":"`...)
	dst = append(dst, id.String()...)
	dst = append(dst, `",`...)
	if len(body) >= 2 {
		dst = append(dst, body[1:len(body)-1]...)
	}
	if resume != "" {
		dst = append(dst, `,"resume":"`...)
		dst = append(dst, resume...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// NoteBodyPriority reads the priority of a stored note body (normal when absent).
func NoteBodyPriority(body []byte) Priority {
	i := bytes.Index(body, []byte(`"priority":"`))
	if i < 0 {
		return PriorityNormal
	}
	rest := body[i+len(`"priority":"`):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return PriorityNormal
	}
	p, err := ParsePriority(string(rest[:end]))
	if err != nil {
		return PriorityNormal
	}
	return p
}

// NoteBodyType reads the type of a stored note body ("" when absent or not a
// valid id). The type is copied: it never keeps the body alive.
func NoteBodyType(body []byte) string {
	i := bytes.Index(body, []byte(`"type":"`))
	if i < 0 {
		return ""
	}
	rest := body[i+len(`"type":"`):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 || !ValidID(string(rest[:end])) {
		return ""
	}
	return string(rest[:end])
}

// AppendInbox appends an inbox (resume) frame (device side).
func AppendInbox(dst []byte, after string) []byte {
	dst = append(dst, `{"op":"inbox","after":`...)
	dst = strconv.AppendQuote(dst, after)
	return append(dst, '}')
}

// AppendNoteAck appends a note ack frame (device side).
func AppendNoteAck(dst []byte, c Cursor) []byte {
	dst = append(dst, `{"op":"ack","note":"`...)
	dst = append(dst, c.String()...)
	return append(dst, `"}`...)
}
