package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// writerPool is the shared set of goroutines that write to devices.
//
// Conns with something to send are queued (each at most once while it is
// queued or being written), in one of two FIFOs: urgent (a critical stage or a
// critical/high note was the reason to queue it) or normal; writers take urgent
// conns first. The queues are FIFOs under a mutex: pushing never
// blocks, so the fanout never waits on a writer, whatever the number of conns
// (closed conns still in the queue included). A fixed core of writers serves
// the queue; a writer that pops a conn and sees more waiting wakes another. The
// monitor, every tick:
//   - enforces WriteTimeout: a writer whose current write has not finished for
//     WriteTimeout has its connection closed (slow consumer). This keeps timers and
//     clock reads off the per-write path: a writer only bumps a sequence number;
//   - when no write completed during a tick while work waits (writers stuck on slow
//     devices), starts extra writers, up to MaxWriters; they exit when the queue is
//     empty.
type writerPool struct {
	qmu   sync.Mutex
	q     []*conn // FIFO; q[head:] are waiting
	head  int     // first waiting element of q
	uq    []*conn // the urgent FIFO; uq[uhead:] are waiting
	uhead int
	wake  chan struct{} // a token: work may be waiting

	core         int
	max          int
	writeTimeout time.Duration
	flushed      atomic.Uint64 // completed flushes: progress marker for the monitor
	onSpawn      func()
	onSlow       func()
	m            *metrics

	mu    sync.Mutex // guards slots
	slots map[*writerSlot]struct{}

	stop chan struct{}
	wg   sync.WaitGroup
}

// writerSlot is one writer's current write, as the monitor sees it.
type writerSlot struct {
	seq    atomic.Uint64 // bumped at the start of each write
	cur    atomic.Pointer[conn]
	killed atomic.Uint64 // the seq of the write the monitor closed for exceeding WriteTimeout
	_      [40]byte      // keep slots of different writers off one cache line

	// monitor-only state
	lastSeq   uint64
	stuckFrom time.Time
}

func newWriterPool(core, maxWriters int, writeTimeout time.Duration, m *metrics) *writerPool {
	p := &writerPool{wake: make(chan struct{}, 1), core: core, max: maxWriters, writeTimeout: writeTimeout,
		onSpawn: m.writersSpawned.Inc, onSlow: m.slowConsumerCloses.Inc, m: m,
		slots: make(map[*writerSlot]struct{}), stop: make(chan struct{})}
	for i := 0; i < core; i++ {
		p.start(false)
	}
	p.wg.Add(1)
	go p.monitor(20 * time.Millisecond)
	return p
}

// push queues c (on the urgent FIFO when urgent); it never blocks.
func (p *writerPool) push(c *conn, urgent bool) {
	p.qmu.Lock()
	if urgent {
		p.uq = append(p.uq, c)
	} else {
		p.q = append(p.q, c)
	}
	p.qmu.Unlock()
	p.signal()
}

func (p *writerPool) signal() {
	select {
	case p.wake <- struct{}{}:
	default: // a token is already there
	}
}

// pop takes the oldest queued conn (nil when none) and passes the wake token on
// when more wait, so idle writers join in.
func (p *writerPool) pop() *conn {
	p.qmu.Lock()
	var c *conn
	if p.uhead < len(p.uq) {
		c = take(&p.uq, &p.uhead)
	} else if p.head < len(p.q) {
		c = take(&p.q, &p.head)
	}
	more := p.uhead < len(p.uq) || p.head < len(p.q)
	p.qmu.Unlock()
	if more {
		p.signal()
	}
	return c
}

// take pops the first waiting conn of the FIFO q[*head:] (non-empty).
func take(q *[]*conn, head *int) *conn {
	c := (*q)[*head]
	(*q)[*head] = nil
	*head++
	if *head == len(*q) {
		*q, *head = (*q)[:0], 0 // reuse the array
	} else if *head > 1024 && *head*2 > len(*q) {
		n := copy(*q, (*q)[*head:])
		clear((*q)[n:])
		*q, *head = (*q)[:n], 0
	}
	return c
}

// waiting is the number of queued conns.
func (p *writerPool) waiting() int {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	return len(p.q) - p.head + len(p.uq) - p.uhead
}

func (p *writerPool) start(extra bool) {
	s := &writerSlot{}
	p.mu.Lock()
	p.slots[s] = struct{}{}
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			p.mu.Lock()
			delete(p.slots, s)
			p.mu.Unlock()
		}()
		w := &writer{slot: s, batch: make([]*prepared, 0, 4), m: p.m}
		defer w.commit()
		for {
			if c := p.pop(); c != nil {
				c.flush(w)
				p.flushed.Add(1)
				continue
			}
			w.commit() // going idle: publish what this writer counted
			if extra {
				return
			}
			select {
			case <-p.wake:
			case <-p.stop:
				return
			}
		}
	}()
}

// writer is one pool goroutine's state, passed to conn.flush.
type writer struct {
	slot  *writerSlot
	batch []*prepared
	nb    noteBatch
	m     *metrics
	// sends counted locally and committed in batches, so writers do not contend
	// on one version's histogram lock and counters for every delivery.
	sends []sendSample
	// per-commit scratch for one version's cells and platform buckets
	byCell [numCells]uint64
	byLat  [numPlatforms][numLatBounds]uint64
}

type sendSample struct {
	st    *versionStats
	latMS int64
	plat  uint8
	cell  uint16
}

const commitEvery = 256

func (w *writer) recordSend(st *versionStats, latMS int64, plat uint8, cell uint16) {
	w.sends = append(w.sends, sendSample{st, latMS, plat, cell})
	if len(w.sends) >= commitEvery {
		w.commit()
	}
}

// commit adds the local samples to their versions' stats and the metrics.
func (w *writer) commit() {
	if len(w.sends) == 0 {
		return
	}
	for i := 0; i < len(w.sends); {
		st := w.sends[i].st
		j := i
		st.mu.Lock()
		for ; j < len(w.sends) && w.sends[j].st == st; j++ {
			ms := min(max(w.sends[j].latMS, 1), maxLatencyMS)
			_ = st.lat.RecordValue(ms)
			w.byCell[w.sends[j].cell]++
			w.byLat[w.sends[j].plat][latBucket(ms)]++
		}
		st.mu.Unlock()
		st.sent.Add(uint64(j - i))
		for k, n := range w.byCell {
			if n > 0 {
				st.sentBy[k].Add(n)
				w.byCell[k] = 0
			}
		}
		for p := range w.byLat {
			for b, n := range w.byLat[p] {
				if n > 0 {
					st.latBy[p][b].Add(n)
					w.byLat[p][b] = 0
				}
			}
		}
		st.markDirty()
		i = j
	}
	for _, s := range w.sends {
		w.m.sendLatency.Observe(float64(max(s.latMS, 0)) / 1000)
	}
	w.m.deliveries.Add(float64(len(w.sends)))
	clear(w.sends)
	w.sends = w.sends[:0]
}

func (p *writerPool) monitor(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	last := p.flushed.Load()
	for {
		var now time.Time
		select {
		case <-p.stop:
			return
		case now = <-t.C:
		}
		p.mu.Lock()
		for s := range p.slots {
			c, seq := s.cur.Load(), s.seq.Load()
			if c == nil || seq != s.lastSeq {
				s.lastSeq, s.stuckFrom = seq, now
				continue
			}
			// killed holds the seq of the write it closed, so a kill can never
			// stay set for a later write (and stop the monitor from killing it).
			if now.Sub(s.stuckFrom) >= p.writeTimeout && s.killed.Load() != seq {
				s.killed.Store(seq)
				p.onSlow()
				_ = c.ws.CloseNow() // the blocked Write returns an error; the writer moves on
			}
		}
		alive := len(p.slots)
		p.mu.Unlock()
		done := p.flushed.Load()
		if waiting := p.waiting(); waiting > 0 && done == last {
			for i := 0; i < min(waiting, p.max-alive); i++ {
				p.start(true)
				p.onSpawn()
			}
		}
		last = done
	}
}

func (p *writerPool) close() {
	close(p.stop)
	p.wg.Wait()
}
