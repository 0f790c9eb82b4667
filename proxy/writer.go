package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// writerPool is the shared set of goroutines that write to devices. Conns with
// something to send are queued (each at most once, so the channel, sized to
// MaxConnections, never blocks the fanout). A fixed core of writers serves the
// queue; when no write completes for a stall interval while work waits (writers
// stuck on slow devices until their WriteTimeout), extra writers are started, up
// to MaxWriters; they exit when the queue is empty.
type writerPool struct {
	q       chan *conn
	core    int
	max     int
	alive   atomic.Int64
	flushed atomic.Uint64 // completed flushes: progress marker for the stall monitor
	stop    chan struct{}
	wg      sync.WaitGroup
	spawned func() // metrics hook
}

func newWriterPool(queueLen, core, maxWriters int, spawned func()) *writerPool {
	p := &writerPool{q: make(chan *conn, queueLen+1), core: core, max: maxWriters, stop: make(chan struct{}), spawned: spawned}
	for i := 0; i < core; i++ {
		p.start(false)
	}
	p.wg.Add(1)
	go p.monitor(20 * time.Millisecond)
	return p
}

func (p *writerPool) push(c *conn) { p.q <- c }

func (p *writerPool) start(extra bool) {
	p.alive.Add(1)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.alive.Add(-1)
		batch := make([]*prepared, 0, 4)
		for {
			if extra {
				select {
				case c := <-p.q:
					c.flush(batch)
					p.flushed.Add(1)
				default:
					return
				}
				continue
			}
			select {
			case c := <-p.q:
				c.flush(batch)
				p.flushed.Add(1)
			case <-p.stop:
				return
			}
		}
	}()
}

func (p *writerPool) monitor(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	last := p.flushed.Load()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		now := p.flushed.Load()
		if waiting := len(p.q); waiting > 0 && now == last {
			n := min(waiting, int(int64(p.max)-p.alive.Load()))
			for i := 0; i < n; i++ {
				p.start(true)
				p.spawned()
			}
		}
		last = now
	}
}

func (p *writerPool) close() {
	close(p.stop)
	p.wg.Wait()
}
