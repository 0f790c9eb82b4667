package broadcaster

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// Notifications go through one lane per priority: a bounded queue and its own
// workers. A flood of low notes fills the low lane (and is refused with 503
// once it is full) while critical ones keep their queue and workers. A request
// is answered 202 only after its note is stored in every target inbox; its
// worker holds no lock while it waits on the engine, except the low lane's
// gate while it yields (LowYield), which only low workers take.

// LaneConfig sizes one priority's lane.
type LaneConfig struct {
	Queue   int // notes waiting; a full queue answers 503 overloaded
	Workers int // engine calls in flight
}

// DefaultLanes are the lanes' defaults, by wire.Priority (low first). The low
// lane has 2 workers: with groups of up to 64 notes that still stores
// thousands of low notes a second, and it keeps at most 2 low pipelines at
// Redis ahead of a critical note's. With 8, a flood sent in batches doubled
// critical notes' p99 (docs/benchmarks.md, issue 22 session 9).
var DefaultLanes = [wire.NumPriorities]LaneConfig{
	wire.PriorityLow:      {Queue: 2048, Workers: 2},
	wire.PriorityNormal:   {Queue: 4096, Workers: 32},
	wire.PriorityHigh:     {Queue: 4096, Workers: 32},
	wire.PriorityCritical: {Queue: 4096, Workers: 32},
}

// LowYield is how the low lane gives way to high and critical notes. While a
// high or critical note has been queued within the last Window, low notes go
// to the engine one group at a time (across the lane's workers), at most
// Group notes a call, and each call is followed by a pause Pause times as
// long as the call took (at most Window). So low notes hold at most
// 1/(1+Pause) of this broadcaster's engine time, in calls short enough that a
// critical note's commands wait behind little at Redis. Low notes still
// queue (and, past the queue, get 503 overloaded); nothing is dropped.
//
// Without it, a flood of low notes kept Redis's one core busy from the low
// lane alone, and a critical note's POST-to-device p99 during the flood was
// about 25x its unloaded p99; with the defaults, about 2.4x, while the flood
// took about 5x as long (docs/benchmarks.md, issue 22 session 10).
type LowYield struct {
	// Window: how long after a high or critical note is queued the low lane
	// yields. Default 2s; negative: never.
	Window time.Duration
	// Group: the most low notes in one engine call while yielding, 1 to 64.
	// Default 8.
	Group int
	// Pause after each low call while yielding, in multiples of the call's
	// time, and at most Window; > 0. Default 3.
	Pause float64
}

// DefaultLowYield is LowYield's defaults.
var DefaultLowYield = LowYield{Window: 2 * time.Second, Group: 8, Pause: 3}

func (y LowYield) validate() error {
	if y.Window == 0 || y.Group < 1 || y.Group > noteGroup || !(y.Pause > 0) || math.IsInf(y.Pause, 1) {
		return fmt.Errorf("broadcaster: LowYield: window %v must not be 0 (negative: off), group %d must be 1-%d, pause %v must be > 0 and finite",
			y.Window, y.Group, noteGroup, y.Pause)
	}
	return nil
}

type noteJob struct {
	ctx  context.Context
	w    engine.NoteWrite
	enq  time.Time
	done chan noteOut // buffered: the worker never waits on the handler
}

type noteOut struct {
	res engine.NoteResult
	err error
}

type lanes struct {
	q   [wire.NumPriorities]chan *noteJob
	ctx context.Context
	// urgentAt is when (Config.Now, unix ns) a high or critical note was last
	// queued; lowGate (capacity 1) is held by the low worker whose group is at
	// the engine, or pausing after it, while the low lane yields.
	urgentAt atomic.Int64
	lowGate  chan struct{}
}

type noteMetrics struct {
	notes    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	engine   *prometheus.HistogramVec
	lowYield prometheus.Counter
}

func newNoteMetrics(reg prometheus.Registerer, l *lanes) noteMetrics {
	m := noteMetrics{
		notes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "notifications_total", Help: "Notification requests by priority and result (stored, replayed, shed, failed, invalid)."},
			[]string{"priority", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "notification_seconds", Help: "Time from a notification request's arrival in its lane to stored and pushed, by priority.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"priority"}),
		engine: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "notification_engine_seconds", Help: "Time of one engine call for a lane's group of notifications (each attempt), by priority: notification_seconds less this is the wait in the lane.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"priority"}),
	}
	m.lowYield = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stagecast", Subsystem: "broadcaster",
		Name: "notification_low_yield_seconds_total", Help: "Time the low lane paused to give the engine to high and critical notes (LowYield)."})
	reg.MustRegister(m.notes, m.latency, m.engine, m.lowYield)
	for p := range wire.NumPriorities {
		q := l.q[p]
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stagecast", Subsystem: "broadcaster",
			Name: "notification_queue", Help: "Notifications waiting in a priority's lane.",
			ConstLabels: prometheus.Labels{"priority": wire.Priority(p).String()}},
			func() float64 { return float64(len(q)) }))
	}
	return m
}

// startLanes starts each lane's workers; they end with ctx.
func (s *Server) startLanes(ctx context.Context) *lanes {
	l := &lanes{ctx: ctx, lowGate: make(chan struct{}, 1)}
	for p := range wire.NumPriorities {
		lc := s.cfg.Lanes[p]
		l.q[p] = make(chan *noteJob, lc.Queue)
		for range lc.Workers {
			go s.laneWorker(ctx, wire.Priority(p), l.q[p])
		}
	}
	return l
}

// lowYields tells whether the low lane gives way now (LowYield).
func (s *Server) lowYields() bool {
	w := s.cfg.LowYield.Window
	return w > 0 && s.cfg.Now().UnixNano()-s.lanes.urgentAt.Load() < int64(w)
}

// noteGroup is the most notes a lane worker hands the engine in one call. A
// worker takes what its queue holds, up to this: one note when the lane is
// quiet, groups when notes queue, so the engine's round trips (and Redis's
// reads and writes) stop growing with the rate (docs/benchmarks.md, issue 22
// item 4).
const noteGroup = 64

func (s *Server) laneWorker(ctx context.Context, p wire.Priority, q chan *noteJob) {
	group := make([]*noteJob, 0, noteGroup)
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-q:
			group = append(group[:0], j)
		}
		limit := noteGroup
		yield := p == wire.PriorityLow && s.lowYields()
		if yield {
			limit = s.cfg.LowYield.Group
		}
	fill:
		for len(group) < limit {
			select {
			case j := <-q:
				group = append(group, j)
			default:
				break fill
			}
		}
		live := group[:0]
		for _, j := range group {
			if err := j.ctx.Err(); err != nil {
				j.done <- noteOut{err: err} // the producer left: nothing stored
				continue
			}
			live = append(live, j)
		}
		if len(live) == 0 {
			continue
		}
		if yield {
			s.yieldingCall(ctx, live)
		} else {
			s.notifyRetry(ctx, live)
		}
		clear(group)
	}
}

// yieldingCall is a low group's engine call while the low lane yields: under
// the lane's gate, then a pause LowYield.Pause times the call's length, still
// under the gate. When the lane ends while the group waits for the gate, the
// group still goes through notifyRetry, which answers each note.
func (s *Server) yieldingCall(ctx context.Context, jobs []*noteJob) {
	select {
	case s.lanes.lowGate <- struct{}{}:
	case <-ctx.Done():
		s.notifyRetry(ctx, jobs)
		return
	}
	defer func() { <-s.lanes.lowGate }()
	t0 := time.Now()
	s.notifyRetry(ctx, jobs)
	// At most Window: a call that took long because the engine failed and
	// was retried (up to StageBudget) says nothing about Redis's load, and
	// must not stop the low lane for three budgets after Redis is back.
	pause := min(time.Duration(float64(time.Since(t0))*s.cfg.LowYield.Pause), s.cfg.LowYield.Window)
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	s.nm.lowYield.Add(pause.Seconds())
}

// notifyRetry runs a group's NotifyMany through the notes breaker, retrying
// the notes the engine failed, under the same note ids and idempotency keys
// (a retry stores nothing twice), until StageBudget is spent. Each note is
// answered (its job's done) as soon as its outcome is final: a note stored,
// or refused as an idempotency conflict, is answered after the attempt that
// stored it, never held back by another note's retries. ctx is the lane's: a
// producer that leaves does not cut the call for the group.
func (s *Server) notifyRetry(ctx context.Context, jobs []*noteJob) {
	answer := func(j *noteJob, o noteOut) {
		s.nm.latency.WithLabelValues(j.w.Note.Priority.String()).Observe(time.Since(j.enq).Seconds())
		j.done <- o
	}
	pending := jobs
	var last []noteOut // pending's errors, after an attempt
	err := s.attempts(ctx, s.breakers.notes, "notifications failed; retrying with the same ids",
		[]any{"notes", len(jobs), "first", jobs[0].w.ID}, func(actx context.Context) (bool, error) {
			ws := make([]engine.NoteWrite, len(pending))
			for k, j := range pending {
				ws[k] = j.w
			}
			t0 := time.Now()
			res, err := withinDeadline(actx, func(ctx context.Context) ([]engine.NoteOutcome, error) {
				return s.eng.NotifyMany(ctx, ws), nil
			})
			s.nm.engine.WithLabelValues(jobs[0].w.Note.Priority.String()).Observe(time.Since(t0).Seconds())
			var failed []*noteJob
			var firstErr error
			last = last[:0]
			for k, j := range pending {
				o := engine.NoteOutcome{Err: err} // err: abandoned at the deadline
				if err == nil {
					o = res[k]
				}
				if o.Err != nil && !errors.Is(o.Err, engine.ErrIdempotencyConflict) {
					failed = append(failed, j)
					last = append(last, noteOut{o.Res, o.Err})
					firstErr = cmp.Or(firstErr, o.Err)
					continue
				}
				answer(j, noteOut{o.Res, o.Err})
			}
			pending = failed
			return len(pending) > 0, firstErr
		})
	// What is left failed until the budget ran out (each with its last
	// error), or the breaker refused the call and nothing was tried.
	for k, j := range pending {
		o := noteOut{err: err}
		if k < len(last) {
			o = last[k]
		}
		answer(j, o)
	}
}

// NotifyReply is producer.NotifyReply: the API's types are the public client's.
type NotifyReply = producer.NotifyReply

type statusReply struct {
	status int
	body   any
}

func newNoteID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "n" + hex.EncodeToString(b[:])
}

func (s *Server) notify(r *http.Request) (any, error) {
	p, _ := r.Context().Value(producerKey{}).(*producerEntry)
	if p != nil && p.events != nil {
		return nil, errf(http.StatusForbidden, "forbidden", "producer %s is limited to some events; notifications need a producer token allowed every event", p.name)
	}
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, wire.MaxNoteBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.nm.notes.WithLabelValues("unknown", "invalid").Inc()
			return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "body larger than %d bytes (payload at most %d)", wire.MaxNoteBody, wire.MaxNotePayload)
		}
		return nil, errf(http.StatusBadRequest, "bad_request", "reading body: %v", err)
	}
	j, err := s.queueNote(r, p, raw, r.Header.Get("Idempotency-Key"), 0)
	if err != nil {
		return nil, err
	}
	reply, err := s.noteOutcome(r, j)
	if err != nil {
		return nil, err
	}
	return statusReply{http.StatusAccepted, reply}, nil
}

// queuedNote is one notification handed to its lane, waiting for the engine.
type queuedNote struct {
	job  *noteJob
	n    wire.Notification
	idem string
}

// queueNote validates one notification's body and hands it to its lane. With
// wait 0 a full lane refuses at once (503 overloaded: nothing stored); with a
// wait, it waits that long for room (a batch).
func (s *Server) queueNote(r *http.Request, p *producerEntry, raw []byte, idem string, wait time.Duration) (*queuedNote, error) {
	n, err := wire.ParseNotifyRequest(raw)
	if err != nil {
		s.nm.notes.WithLabelValues("unknown", "invalid").Inc()
		if errors.Is(err, wire.ErrTooLarge) {
			return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "%v", err)
		}
		return nil, errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	if err := checkIdemKey(idem); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	scoped := "" // keys are per producer (hardening #5): another's key is not a conflict
	if idem != "" {
		scoped = p.name + ":" + idem
	}
	w := engine.NoteWrite{ID: newNoteID(), IdempotencyKey: scoped, BodyHash: hex.EncodeToString(sum[:16]),
		Note: n, TS: s.cfg.Now().UnixMilli()}
	// A keyless request needs no idempotency record: the lane's retries reuse
	// the note id, and each inbox stores an id once.
	prio := n.Priority.String()
	j := &noteJob{ctx: r.Context(), w: w, enq: time.Now(), done: make(chan noteOut, 1)}
	var room <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		room = t.C
	}
	if n.Priority >= wire.PriorityHigh {
		s.lanes.urgentAt.Store(s.cfg.Now().UnixNano()) // the low lane yields (LowYield)
	}
	select {
	case s.lanes.q[n.Priority] <- j:
		return &queuedNote{job: j, n: n, idem: idem}, nil
	default:
	}
	if room != nil {
		select {
		case s.lanes.q[n.Priority] <- j:
			return &queuedNote{job: j, n: n, idem: idem}, nil
		case <-room:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	s.nm.notes.WithLabelValues(prio, "shed").Inc()
	return nil, errf(http.StatusServiceUnavailable, "overloaded", "the %s lane is full (%d notifications queued); nothing was stored; retry later", prio, cap(s.lanes.q[n.Priority]))
}

// noteOutcome waits for a queued notification's engine result and answers it.
func (s *Server) noteOutcome(r *http.Request, q *queuedNote) (NotifyReply, error) {
	j, n, idem := q.job, q.n, q.idem
	w := j.w
	prio := n.Priority.String()
	var out noteOut
	select {
	case out = <-j.done:
	case <-r.Context().Done():
		return NotifyReply{}, r.Context().Err()
	}
	if errors.Is(out.err, engine.ErrIdempotencyConflict) {
		s.nm.notes.WithLabelValues(prio, "invalid").Inc()
		return NotifyReply{}, errf(http.StatusConflict, "idempotency_conflict", "Idempotency-Key %q was used for another notification (%s); use a new key", idem, out.res.ID)
	}
	if out.err != nil {
		s.nm.notes.WithLabelValues(prio, "failed").Inc()
		s.audit(r, "notify", "id", w.ID, "priority", prio, "result", "error", "err", out.err.Error())
		if idem == "" {
			ae := s.engineError(out.err)
			ae.code = "outcome_unknown"
			ae.msg = fmt.Sprintf("the engine did not confirm notification %s within %v (%v); it may be stored in some inboxes: send requests with an Idempotency-Key to retry safely", w.ID, s.cfg.StageBudget, out.err)
			return NotifyReply{}, ae
		}
		return NotifyReply{}, s.outcomeUnknown(out.err, idem)
	}
	result := "stored"
	if out.res.Replayed {
		result = "replayed"
	}
	s.nm.notes.WithLabelValues(prio, result).Inc()
	if s.cfg.OnNote != nil && !out.res.Replayed {
		s.cfg.OnNote(NoteAccepted{Type: n.Type, Priority: prio, Members: len(n.Members), Devices: len(n.Devices),
			Stored: out.res.Stored, Expires: s.cfg.Now().Add(n.TTL)})
	}
	s.trail(r, engine.AuditEntry{Action: "notify", Result: result, Detail: fmt.Sprintf("id %s type %s priority %s members %d devices %d stored %d pushes %d",
		out.res.ID, n.Type, prio, len(n.Members), len(n.Devices), out.res.Stored, out.res.Pushes)})
	s.audit(r, "notify", "id", out.res.ID, "type", n.Type, "priority", prio, "members", len(n.Members), "devices", len(n.Devices),
		"stored", out.res.Stored, "pushes", out.res.Pushes, "result", result)
	return NotifyReply{ID: out.res.ID, Members: len(n.Members), Devices: len(n.Devices),
		Priority: prio, Stored: out.res.Stored, Pushes: out.res.Pushes, Replayed: out.res.Replayed}, nil
}

// Batches (POST /v1/notifications:batch): at most MaxNoteBatch notifications
// and MaxNoteBatchBody bytes in one request.
const (
	MaxNoteBatch     = 1000
	MaxNoteBatchBody = 4 << 20
)

// chargeBatch takes a batch of n notes from the producer's rate limit: one
// token per note (the request took the first), so a batch costs what the
// same notes sent one by one cost. A batch the limit cannot take now is
// refused whole with 429 and when to retry; one larger than the burst could
// never be taken: 413.
func (s *Server) chargeBatch(p *producerEntry, n int) error {
	if p == nil || n <= 1 {
		return nil
	}
	now := time.Now()
	res := p.limit.ReserveN(now, n-1)
	if !res.OK() {
		return errf(http.StatusRequestEntityTooLarge, "too_large", "a batch of %d notifications is more than producer %s's burst (%d): send smaller batches", n, p.name, p.limit.Burst())
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		e := errf(http.StatusTooManyRequests, "rate_limited", "producer %s sends more than %.0f notifications a second (burst %d); this batch of %d fits in %v", p.name, s.cfg.ProducerRate, s.cfg.ProducerBurst, n, d.Round(time.Millisecond))
		e.retryAfter = int(math.Ceil(d.Seconds()))
		return e
	}
	return nil
}

// notifyBatch answers POST /v1/notifications:batch: each notification is
// validated, queued (waiting for lane room within the stage budget) and
// answered on its own, in the order sent; one bad or refused notification
// never fails the others. The request itself fails (4xx) only when the batch
// cannot be read.
func (s *Server) notifyBatch(r *http.Request) (any, error) {
	p, _ := r.Context().Value(producerKey{}).(*producerEntry)
	if p != nil && p.events != nil {
		return nil, errf(http.StatusForbidden, "forbidden", "producer %s is limited to some events; notifications need a producer token allowed every event", p.name)
	}
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, MaxNoteBatchBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "batch body larger than %d bytes", MaxNoteBatchBody)
		}
		return nil, errf(http.StatusBadRequest, "bad_request", "reading body: %v", err)
	}
	var req struct {
		Notifications []struct {
			IdempotencyKey string          `json:"idempotency_key"`
			Notification   json.RawMessage `json:"notification"`
		} `json:"notifications"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, errf(http.StatusBadRequest, "bad_request", "batch body: %v", err)
	}
	switch n := len(req.Notifications); {
	case n == 0:
		return nil, errf(http.StatusBadRequest, "bad_request", "batch holds no notification")
	case n > MaxNoteBatch:
		return nil, errf(http.StatusRequestEntityTooLarge, "too_large", "batch holds %d notifications, at most %d", n, MaxNoteBatch)
	}
	if err := s.chargeBatch(p, len(req.Notifications)); err != nil {
		return nil, err
	}
	results := make([]producer.BatchResult, len(req.Notifications))
	deadline := time.Now().Add(s.cfg.StageBudget)
	// Rounds: a note whose Idempotency-Key an earlier note of the batch holds
	// waits for that one's outcome, so a repeated key is answered in order
	// (the first stores, a later one replays or conflicts), as if sent one
	// after another; every other note goes in the first round.
	pending := make([]int, len(req.Notifications))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		var later []int
		inRound := map[string]bool{}
		queued := map[int]*queuedNote{}
		for _, i := range pending {
			bn := req.Notifications[i]
			if k := bn.IdempotencyKey; k != "" {
				if inRound[k] {
					later = append(later, i)
					continue
				}
				inRound[k] = true
			}
			if len(bn.Notification) == 0 {
				results[i] = batchError(errf(http.StatusBadRequest, "bad_request", "notification %d: no \"notification\" object", i))
				continue
			}
			q, err := s.queueNote(r, p, bn.Notification, bn.IdempotencyKey, max(time.Until(deadline), time.Millisecond))
			if err != nil {
				results[i] = batchError(err)
				continue
			}
			queued[i] = q
		}
		for _, i := range pending {
			q := queued[i]
			if q == nil {
				continue
			}
			reply, err := s.noteOutcome(r, q)
			if err != nil {
				results[i] = batchError(err)
				continue
			}
			results[i] = producer.BatchResult{Status: http.StatusAccepted, Reply: &reply}
		}
		pending = later
	}
	return producer.BatchReply{Results: results}, nil
}

// batchError is one notification's refusal in a batch reply.
func batchError(err error) producer.BatchResult {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = errf(http.StatusServiceUnavailable, "unavailable", "%v", err)
	}
	return producer.BatchResult{Status: ae.status, Error: &producer.APIError{Status: ae.status, Code: ae.code, Msg: ae.msg}}
}

// NoteAccepted is one notification the broadcaster stored (Config.OnNote).
type NoteAccepted struct {
	Type, Priority   string
	Members, Devices int       // targets named
	Stored           int       // inbox copies stored
	Expires          time.Time // when its TTL runs out
}

func (s *Server) noteReport(r *http.Request) (any, error) {
	if p, _ := r.Context().Value(producerKey{}).(*producerEntry); p != nil && p.events != nil {
		return nil, errf(http.StatusForbidden, "forbidden", "producer %s is limited to some events; notification reports need a producer token allowed every event", p.name)
	}
	id := r.PathValue("id")
	if err := wire.CheckID("notification", id); err != nil {
		return nil, errf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	rep, err := call(s, s.breakers.reads, r, func(ctx context.Context) (engine.NoteReport, error) { return s.eng.NoteReport(ctx, id) })
	if errors.Is(err, engine.ErrNoteNotFound) {
		return nil, errf(http.StatusNotFound, "not_found", "no notification %s is kept (unknown, or past its ttl)", id)
	}
	return rep, err
}

func validateLanes(l *[wire.NumPriorities]LaneConfig) error {
	for p := range l {
		if l[p].Queue <= 0 || l[p].Workers <= 0 || l[p].Workers > 1024 {
			return fmt.Errorf("broadcaster: lane %s: queue %d and workers %d must be > 0 (workers at most 1024)",
				wire.Priority(p), l[p].Queue, l[p].Workers)
		}
	}
	return nil
}
