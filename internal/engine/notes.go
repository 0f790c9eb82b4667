package engine

import (
	"encoding/json"
	"errors"
	"hash/fnv"
	"time"

	"github.com/stagecast/stagecast/internal/wire"
)

// Notifications (contract v2): every note is stored in each target's inbox, and,
// in the same atomic step, pushed to the proxies the registry names for that
// inbox. The Redis layout is in package redisengine; the memory engine keeps the
// same rules in maps.
//
// Why the registry cannot lose a note: for one inbox, the append+push step and
// a proxy's registration are ordered (one Redis shard, one Lua script; one mutex
// in the memory engine). A proxy registers an inbox before it reads that inbox's
// backlog for a resume. A note appended before the registration is in the
// backlog it reads; a note appended after it finds the registration and is
// pushed. A proxy whose push subscription broke re-reads the inboxes it holds
// when the subscription is back (onSubscribed).

// NoteShards is how many shards notification keys and push channels are spread
// over (the {n<k>} hash tag). Every broadcaster, proxy and prefetch server of a
// deployment must agree on it: changing it moves every inbox.
const NoteShards = 128

// RegistryTTL is how long a proxy's registration of an inbox lasts unless
// refreshed; proxies refresh every RegistryTTL/3 (jittered) and remove an inbox
// when its last device leaves. A proxy that died without removing its entries
// drops out of the registry within RegistryTTL.
const RegistryTTL = 3 * time.Minute

// DefaultInboxLen is how many notes an inbox keeps (the contract asks for at
// least 200).
const DefaultInboxLen = 200

// ErrNoteNotFound: no notification with that id is kept.
var ErrNoteNotFound = errors.New("no such notification")

// Inbox names one inbox: a member's or a device's.
type Inbox struct {
	Kind byte // wire.InboxMember or wire.InboxDevice
	ID   string
}

func (i Inbox) String() string { return string(i.Kind) + ":" + i.ID }

// Shard is the inbox's notification shard, 0 <= Shard < NoteShards.
func (i Inbox) Shard() int {
	h := fnv.New32a()
	_, _ = h.Write([]byte{i.Kind, ':'})
	_, _ = h.Write([]byte(i.ID))
	return int(h.Sum32() % NoteShards)
}

// NoteWrite is one notification as the broadcaster hands it to the engine.
type NoteWrite struct {
	ID string // the notification id (a wire id)
	// IdempotencyKey, when set, makes a retry return the first notification's id:
	// its inboxes are not written twice; it is pushed again (duplicates carry the
	// same cursor). BodyHash tells a retry from a different request.
	IdempotencyKey string
	BodyHash       string
	Note           wire.Notification
	TS             int64 // broadcaster's clock, Unix ms
}

// NoteResult is what Notify did.
type NoteResult struct {
	ID       string
	Replayed bool // an earlier request with the same idempotency key made ID
	Stored   int  // inboxes that hold the note
	Pushes   int  // push messages sent to proxies
}

// NoteOutcome is one write's result in a NotifyMany.
type NoteOutcome struct {
	Res NoteResult
	Err error
}

// StoredNote is one note of an inbox.
type StoredNote struct {
	Pos   wire.Pos
	Body  []byte // wire.AppendNoteBody
	ExpMS int64
}

// GoneRing is how many removed note ids an inbox remembers, so a retry of one
// (the same note id under an idempotency key) stores nothing instead of
// bringing back a note that a dedup_key replaced or a bound removed. A retry
// after more removals than that from the same inbox may store it again.
const GoneRing = 64

// InboxStats is the size of one inbox's storage.
type InboxStats struct {
	Notes       int // entries kept (expired ones included until a bound removes them)
	IndexFields int // at most 2*Notes + 2 ("read", "gone")
}

// NotePush is one note pushed to a proxy for one inbox it registered.
type NotePush struct {
	Inbox Inbox
	Pos   wire.Pos
	// Prev is the inbox's entry before this note when it was stored (zero:
	// none). A proxy whose device has seen less than Prev missed a note (a
	// registration lost in a failover, a push lost while its subscription was
	// down) and reads the backlog before writing this one.
	Prev     wire.Pos
	Priority wire.Priority
	Body     []byte
}

// NoteCount is one proxy's counts for one notification since its last report.
type NoteCount struct {
	Sent, Acked uint64
}

// NoteReport is the delivery report of one notification.
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

// noteMeta is stored per notification for its report.
type noteMeta struct {
	Type      string   `json:"type"`
	Priority  string   `json:"priority"`
	CreatedMS int64    `json:"created"`
	Members   []string `json:"members,omitempty"`
	Devices   []string `json:"devices,omitempty"`
}

// NoteTargets lists a write's inboxes, members first.
func NoteTargets(w *NoteWrite) []Inbox {
	out := make([]Inbox, 0, len(w.Note.Members)+len(w.Note.Devices))
	for _, m := range w.Note.Members {
		out = append(out, Inbox{wire.InboxMember, m})
	}
	for _, d := range w.Note.Devices {
		out = append(out, Inbox{wire.InboxDevice, d})
	}
	return out
}

// NoteMeta returns the JSON-able record kept for w's report.
func NoteMeta(w *NoteWrite) any {
	return noteMeta{Type: w.Note.Type, Priority: w.Note.Priority.String(), CreatedMS: w.TS,
		Members: w.Note.Members, Devices: w.Note.Devices}
}

// ReportFromMeta starts a report from a stored meta record (JSON).
func ReportFromMeta(id string, meta []byte) (NoteReport, []Inbox, error) {
	var m noteMeta
	if err := json.Unmarshal(meta, &m); err != nil {
		return NoteReport{}, nil, err
	}
	w := NoteWrite{Note: wire.Notification{Members: m.Members, Devices: m.Devices}}
	return NoteReport{ID: id, Type: m.Type, Priority: m.Priority, CreatedMS: m.CreatedMS,
		Members: len(m.Members), Devices: len(m.Devices)}, NoteTargets(&w), nil
}
