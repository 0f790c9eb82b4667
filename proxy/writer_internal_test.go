package proxy

import (
	"testing"
	"time"
)

// The writer queue never blocks a push, however many conns wait and however
// few writers there are (the old channel, sized to MaxConnections, blocked the
// fanout once closed conns still queued pushed it past its size).
func TestWriterQueueNeverBlocks(t *testing.T) {
	p := &writerPool{wake: make(chan struct{}, 1)} // no writers at all
	const n = 100000
	conns := make([]*conn, n)
	done := make(chan struct{})
	go func() {
		for i := range conns {
			conns[i] = &conn{}
			p.push(conns[i], false)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("push blocked with no writer running")
	}
	if w := p.waiting(); w != n {
		t.Fatalf("%d waiting, want %d", w, n)
	}
	for i := 0; i < n; i++ {
		if c := p.pop(); c != conns[i] {
			t.Fatalf("pop %d: not FIFO", i)
		}
	}
	if p.pop() != nil || p.waiting() != 0 {
		t.Fatal("queue not empty after popping everything")
	}
}

// Urgent conns (a critical stage or a high/critical note) are taken before
// every normal one already waiting.
func TestWriterUrgentFirst(t *testing.T) {
	p := &writerPool{wake: make(chan struct{}, 1)}
	normal := []*conn{{}, {}, {}}
	for _, c := range normal {
		p.push(c, false)
	}
	urgent := &conn{}
	p.push(urgent, true)
	if got := p.pop(); got != urgent {
		t.Fatal("an urgent conn waited behind normal ones")
	}
	for i, c := range normal {
		if got := p.pop(); got != c {
			t.Fatalf("normal pop %d: not FIFO", i)
		}
	}
	if p.pop() != nil {
		t.Fatal("queues not empty")
	}
}
