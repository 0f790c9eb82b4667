package prefetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// InboxStore reads inboxes (both engines satisfy it).
type InboxStore interface {
	ReadInbox(ctx context.Context, ib engine.Inbox, after wire.Pos, limit int) ([]engine.StoredNote, error)
}

// MaxInboxPage is the most notes one inbox pull returns.
const MaxInboxPage = 100

// ErrBadCursor: the after cursor does not parse.
var ErrBadCursor = errors.New("bad inbox cursor")

// ErrNoInbox: the request carries no device token, so it names no inbox.
var ErrNoInbox = errors.New("inbox reads need a device token (Authorization: Bearer <token>)")

// InboxNote is one note as a pull returns it.
type InboxNote struct {
	ID       string          // the note's cursor
	NID      string          `json:"nid"`
	Type     string          `json:"type"`
	Priority string          `json:"priority"`
	Payload  json.RawMessage `json:"payload"`
	TS       int64           `json:"ts"`
}

// InboxPage is one pull: notes of the device's member and device inboxes after
// the cursor, merged oldest first, and the cursor to pass next.
type InboxPage struct {
	Notes []InboxNote
	Next  string
}

// ErrPullRate: the device pulled its inbox more often than PullRate allows.
var ErrPullRate = errors.New("inbox pulled too often; retry later")

// Pull rate per device token (hardening #4): a device pulls once at start and
// when it is told to, so the default is generous for a device and tight for a
// script; each pull costs at most 4 engine calls (2 per inbox).
const (
	DefaultPullRate  = 0.5 // pulls per second, per device
	DefaultPullBurst = 10
	pullLimiters     = 100_000 // devices whose limiter is kept (LRU)
)

// InboxReader serves inbox pulls: the offline path of notifications. It reads
// the engine directly (inboxes are per device: nothing to share in a cache).
type InboxReader struct {
	Store InboxStore
	// Pulls counts pulls by result ("ok", "error", "rate_limited"); optional.
	Pulls *prometheus.CounterVec
	// PullRate and PullBurst bound pulls per device (the token's sub); zero
	// fields take DefaultPullRate and DefaultPullBurst.
	PullRate  float64
	PullBurst int
	Now       func() time.Time // default time.Now
	// OnPull, when set, is called for each note a pull returns (the analytics
	// stream's pulled counts per type and priority). It must not block.
	OnPull func(noteType, priority string)

	once     sync.Once
	limiters *lru.Cache[string, *rate.Limiter]
}

// allow spends one pull of device's budget.
func (r *InboxReader) allow(device string) bool {
	r.once.Do(func() {
		r.limiters, _ = lru.New[string, *rate.Limiter](pullLimiters)
		if r.PullRate <= 0 {
			r.PullRate = DefaultPullRate
		}
		if r.PullBurst <= 0 {
			r.PullBurst = DefaultPullBurst
		}
		if r.Now == nil {
			r.Now = time.Now
		}
	})
	l, ok := r.limiters.Get(device)
	if !ok {
		l = rate.NewLimiter(rate.Limit(r.PullRate), r.PullBurst)
		if prev, loaded, _ := r.limiters.PeekOrAdd(device, l); loaded {
			l = prev
		}
	}
	return l.AllowN(r.Now(), 1)
}

func (r *InboxReader) count(result string) {
	if r.Pulls != nil {
		r.Pulls.WithLabelValues(result).Inc()
	}
}

// Read returns up to limit notes (1..MaxInboxPage; 0 means MaxInboxPage) of
// member's and device's inboxes after after (a resume cursor, "" = from the
// oldest kept). An empty member or device is skipped.
func (r *InboxReader) Read(ctx context.Context, member, device, after string, limit int) (InboxPage, error) {
	a, err := wire.ParseAfter(after)
	if err != nil {
		return InboxPage{}, fmt.Errorf("%w: %v", ErrBadCursor, err)
	}
	if limit <= 0 || limit > MaxInboxPage {
		limit = MaxInboxPage
	}
	if !r.allow(member + "\x00" + device) {
		r.count("rate_limited")
		return InboxPage{}, ErrPullRate
	}
	type src struct {
		kind  byte
		notes []engine.StoredNote
	}
	var srcs []src
	for _, ib := range []engine.Inbox{{Kind: wire.InboxMember, ID: member}, {Kind: wire.InboxDevice, ID: device}} {
		if ib.ID == "" {
			continue
		}
		notes, err := r.Store.ReadInbox(ctx, ib, a.Get(ib.Kind), limit)
		if err != nil {
			r.count("error")
			return InboxPage{}, fmt.Errorf("inbox: %w", err)
		}
		srcs = append(srcs, src{ib.Kind, notes})
	}
	next := a
	var page InboxPage
	idx := make([]int, len(srcs))
	for len(page.Notes) < limit {
		best := -1
		for i, s := range srcs {
			if idx[i] < len(s.notes) && (best < 0 || s.notes[idx[i]].Pos.Less(srcs[best].notes[idx[best]].Pos)) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		sn := srcs[best].notes[idx[best]]
		idx[best]++
		var n InboxNote
		if err := json.Unmarshal(sn.Body, &n); err != nil {
			continue // a note that does not decode is skipped, never the page
		}
		n.ID = wire.Cursor{Kind: srcs[best].kind, Pos: sn.Pos}.String()
		page.Notes = append(page.Notes, n)
		next.Set(srcs[best].kind, sn.Pos)
		if r.OnPull != nil {
			r.OnPull(n.Type, n.Priority)
		}
	}
	page.Next = next.String()
	r.count("ok")
	return page, nil
}
