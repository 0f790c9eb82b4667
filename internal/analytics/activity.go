package analytics

import (
	"context"
	"sync"
	"time"
)

// Topics of the per-interval activity records.
const (
	TopicConnections = "connections" // proxies' connects, disconnects and refusals
	TopicNotes       = "notes"       // notification outcomes by type and priority
)

// EveryActivity is how often connection and notification counts are emitted.
const EveryActivity = 10 * time.Second

// Connections is the data of a "connections" record: what one proxy's
// connections did over the interval.
type Connections struct {
	Proxy      string `json:"proxy"`
	IntervalMS int64  `json:"interval_ms"`
	// Connections: devices connected at the end of the interval.
	Connections int    `json:"connections"`
	Connects    uint64 `json:"connects"`
	// Disconnects by the close code the proxy sent ("1012", "4003"), or
	// "closed" when the device or the network ended the connection.
	Disconnects map[string]uint64 `json:"disconnects,omitempty"`
	// Refused admissions by reason (capacity, ip_capacity, draining, rate,
	// unauthorized, bad_request, handshake, ...).
	Refused map[string]uint64 `json:"refused,omitempty"`
}

// NoteClass is a notification type and priority.
type NoteClass struct{ Type, Priority string }

// Notes is the data of a "notes" record: one server's counts for one
// notification type and priority over the interval. Each server fills what it
// sees: the broadcaster Accepted (and the Members and Devices they target),
// proxies Pushed and Acked, prefetch servers Pulled.
type Notes struct {
	Server     string `json:"server"`
	IntervalMS int64  `json:"interval_ms"`
	Type       string `json:"type"`
	Priority   string `json:"priority"`
	Accepted   uint64 `json:"accepted,omitempty"`
	Members    uint64 `json:"members,omitempty"`
	Devices    uint64 `json:"devices,omitempty"`
	Pushed     uint64 `json:"pushed,omitempty"`
	Acked      uint64 `json:"acked,omitempty"`
	Pulled     uint64 `json:"pulled,omitempty"`
	// Expired: notifications this broadcaster stored whose TTL ran out in the
	// interval (to the minute), and ExpiredInboxes the inbox copies they had;
	// ExpiryUntracked: notifications stored whose expiry could not be
	// tracked (the bound on tracked minutes was reached): never in Expired.
	Expired         uint64 `json:"expired,omitempty"`
	ExpiredInboxes  uint64 `json:"expired_inboxes,omitempty"`
	ExpiryUntracked uint64 `json:"expiry_untracked,omitempty"`
}

// maxNoteClasses bounds the classes a server counts in one interval (types
// are producers' ids); the others count under type "(other)".
const maxNoteClasses = 256

// Activity sums a server's connection and notification counts and emits
// them every EveryActivity: "connections" records (proxies) and "notes"
// records per class (every server). Its methods only add under a mutex and
// never wait; nil, or with a nil producer, it is a no-op.
type Activity struct {
	p      *Producer
	server string
	now    func() time.Time

	mu    sync.Mutex
	since time.Time
	conns *Connections // nil: no proxy counts this interval
	notes map[NoteClass]*Notes
	// expiries: notifications by the minute their TTL runs out, per class;
	// at most maxExpiryEntries (minute, class) entries. Lost if the server
	// restarts (docs/analytics.md).
	expiries map[int64]map[NoteClass]*expiring
	nexp     int
}

type expiring struct{ notes, inboxes uint64 }

// maxExpiryEntries bounds the (minute, class) entries the expiry counts hold
// (30 days of TTL in minutes is 43,200 per class).
const maxExpiryEntries = 100000

// NewActivity returns an Activity for server emitting through p.
func NewActivity(p *Producer, server string, now func() time.Time) *Activity {
	if now == nil {
		now = time.Now
	}
	return &Activity{p: p, server: server, now: now, since: now(), notes: map[NoteClass]*Notes{}, expiries: map[int64]map[NoteClass]*expiring{}}
}

// Stored counts a notification the broadcaster stored: accepted now, with
// members, devices and inboxes copies, expiring at expires.
func (a *Activity) Stored(k NoteClass, members, devices, inboxes uint64, expires time.Time) {
	if a == nil || a.p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.add(k, Notes{Accepted: 1, Members: members, Devices: devices})
	minute := (expires.UnixMilli() + 59999) / 60000 // counted in the interval that passes the minute's end
	byClass := a.expiries[minute]
	e := byClass[k]
	if e == nil {
		if a.nexp >= maxExpiryEntries {
			a.add(k, Notes{ExpiryUntracked: 1})
			return
		}
		if byClass == nil {
			byClass = map[NoteClass]*expiring{}
			a.expiries[minute] = byClass
		}
		e = &expiring{}
		byClass[k] = e
		a.nexp++
	}
	e.notes++
	e.inboxes += inboxes
}

// Connections adds a proxy's counts (connections is the count now), then
// emits if the interval is over.
func (a *Activity) Connections(connections int, connects uint64, disconnects, refused map[string]uint64) {
	if a == nil || a.p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conns == nil {
		a.conns = &Connections{Proxy: a.server}
	}
	c := a.conns
	c.Connections = connections
	c.Connects += connects
	c.Disconnects = addCounts(c.Disconnects, disconnects)
	c.Refused = addCounts(c.Refused, refused)
	a.maybeFlush()
}

// Note adds counts to class k: fill the fields this server sees.
func (a *Activity) Note(k NoteClass, n Notes) {
	if a == nil || a.p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.add(k, n)
}

// add adds n to class k. Caller holds a.mu.
func (a *Activity) add(k NoteClass, n Notes) {
	cur := a.notes[k]
	if cur == nil {
		if len(a.notes) >= maxNoteClasses {
			k.Type = "(other)"
			cur = a.notes[k]
		}
		if cur == nil {
			cur = &Notes{Server: a.server, Type: k.Type, Priority: k.Priority}
			a.notes[k] = cur
		}
	}
	cur.add(n)
}

// add adds o's counts (not its interval) to n.
func (n *Notes) add(o Notes) {
	n.Accepted += o.Accepted
	n.Members += o.Members
	n.Devices += o.Devices
	n.Pushed += o.Pushed
	n.Acked += o.Acked
	n.Pulled += o.Pulled
	n.Expired += o.Expired
	n.ExpiredInboxes += o.ExpiredInboxes
	n.ExpiryUntracked += o.ExpiryUntracked
}

// Tick emits if the interval is over (call it periodically where nothing
// else calls Connections).
func (a *Activity) Tick() {
	if a == nil || a.p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.maybeFlush()
}

// Run emits every EveryActivity (checking each second) until ctx ends, then
// once more.
func (a *Activity) Run(ctx context.Context) {
	if a == nil || a.p == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.Flush()
			return
		case <-t.C:
			a.Tick()
		}
	}
}

// Flush emits what was counted since the last emit, now. Caller must not hold a.mu.
func (a *Activity) Flush() {
	if a == nil || a.p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flush(a.now())
}

func (a *Activity) maybeFlush() {
	if now := a.now(); now.Sub(a.since) >= EveryActivity {
		a.flush(now)
	}
}

func (a *Activity) flush(now time.Time) {
	if len(a.expiries) > 0 {
		done := now.UnixMilli() / 60000 // minutes whose end has passed
		for minute, byClass := range a.expiries {
			if minute > done {
				continue
			}
			for k, e := range byClass {
				a.add(k, Notes{Expired: e.notes, ExpiredInboxes: e.inboxes})
				a.nexp--
			}
			delete(a.expiries, minute)
		}
	}
	interval := now.Sub(a.since).Milliseconds()
	a.since = now
	if c := a.conns; c != nil {
		c.IntervalMS = interval
		a.p.EmitKeyed(TopicConnections, "connections", "", a.server, *c)
		a.conns = nil
	}
	for k, n := range a.notes {
		n.IntervalMS = interval
		a.p.EmitKeyed(TopicNotes, "notes", "", k.Type, *n)
	}
	clear(a.notes)
}

func addCounts(into, from map[string]uint64) map[string]uint64 {
	if len(from) == 0 {
		return into
	}
	if into == nil {
		into = make(map[string]uint64, len(from))
	}
	for k, n := range from {
		into[k] += n
	}
	return into
}
