package netfault_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/netfault"
)

// echo serves line echo on loopback and counts the bytes it received.
func echo(t *testing.T) (addr string, received *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	received = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					received.Add(int64(len(line)))
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), received
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends a line and waits up to wait for it back.
func roundTrip(c net.Conn, r *bufio.Reader, wait time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(wait))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err == nil && line != "ping\n" {
		err = errors.New("got " + line)
	}
	return time.Since(start), err
}

func timeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func newLink(t *testing.T) (*netfault.Link, *atomic.Int64) {
	t.Helper()
	up, received := echo(t)
	ls := netfault.New()
	t.Cleanup(ls.Close)
	l, err := ls.Add("member->peer", up)
	if err != nil {
		t.Fatal(err)
	}
	if ls.Get("member->peer") != l || len(ls.All()) != 1 {
		t.Fatal("the link is not listed")
	}
	if _, err := ls.Add("member->peer", up); err == nil {
		t.Fatal("a second link of the same name was made")
	}
	return l, received
}

// TestPartitionIsSilentAndHeals: a partitioned link drops data without an
// error on either side (the connection stays open, reads time out), also on
// connections made during the partition; Heal closes the held connections,
// and new ones work at once.
func TestPartitionIsSilentAndHeals(t *testing.T) {
	l, _ := newLink(t)
	c, r := dial(t, l.Listen)
	if _, err := roundTrip(c, r, 2*time.Second); err != nil {
		t.Fatalf("healthy link: %v", err)
	}
	if err := l.Apply(netfault.Fault{Kind: netfault.Partition}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, r, 300*time.Millisecond); !timeout(err) {
		t.Fatalf("partitioned: %v, want a read timeout (no reset, no answer)", err)
	}
	c2, r2 := dial(t, l.Listen) // accepted, as behind a dropping firewall nothing says no
	if _, err := roundTrip(c2, r2, 300*time.Millisecond); !timeout(err) {
		t.Fatalf("a new connection while partitioned: %v, want a read timeout", err)
	}
	if got := l.Faults(); len(got) != 1 || got[0] != netfault.Partition {
		t.Fatalf("faults %v", got)
	}
	l.Heal()
	if len(l.Faults()) != 0 {
		t.Fatalf("faults after heal: %v", l.Faults())
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(r); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("a connection the partition held: %v, want it closed by the heal", err)
	}
	c3, r3 := dial(t, l.Listen)
	if _, err := roundTrip(c3, r3, 2*time.Second); err != nil {
		t.Fatalf("after the heal: %v", err)
	}
}

// TestOneWay: out drops only what the member sends (the peer never sees it);
// a blackhole lets it arrive and drops the answer.
func TestOneWay(t *testing.T) {
	l, received := newLink(t)
	c, r := dial(t, l.Listen)
	if err := l.Apply(netfault.Fault{Kind: netfault.Partition, Direction: netfault.Out}); err != nil {
		t.Fatal(err)
	}
	before := received.Load()
	if _, err := roundTrip(c, r, 300*time.Millisecond); !timeout(err) {
		t.Fatalf("out partition: %v", err)
	}
	if received.Load() != before {
		t.Fatal("the peer received what an out partition should drop")
	}
	l.Heal()
	l2, received2 := newLink(t)
	c2, r2 := dial(t, l2.Listen)
	if err := l2.Apply(netfault.Fault{Kind: netfault.Blackhole}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c2, r2, 300*time.Millisecond); !timeout(err) {
		t.Fatalf("blackhole: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for received2.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if received2.Load() == 0 {
		t.Fatal("a blackhole should let the request arrive")
	}
}

// TestDelayBandwidthReset: delay adds its latency each way, bandwidth caps
// the rate, reset ends the connection.
func TestDelayBandwidthReset(t *testing.T) {
	l, _ := newLink(t)
	c, r := dial(t, l.Listen)
	if err := l.Apply(netfault.Fault{Kind: netfault.Delay, Latency: 150 * time.Millisecond, Jitter: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	rtt, err := roundTrip(c, r, 5*time.Second)
	if err != nil || rtt < 200*time.Millisecond {
		t.Fatalf("delay 150ms +/- 50 each way: round trip %v (%v), want >= 200ms", rtt, err)
	}
	// Applying the same kind again replaces it.
	if err := l.Apply(netfault.Fault{Kind: netfault.Delay, Latency: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	l.Heal()

	l2, _ := newLink(t)
	c2, r2 := dial(t, l2.Listen)
	if err := l2.Apply(netfault.Fault{Kind: netfault.Bandwidth, Direction: netfault.In, RateKBps: 16}); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 24*1024) + "\n"
	start := time.Now()
	_ = c2.SetDeadline(start.Add(10 * time.Second))
	if _, err := io.WriteString(c2, big); err != nil {
		t.Fatal(err)
	}
	if line, err := r2.ReadString('\n'); err != nil || len(line) != len(big) {
		t.Fatalf("bandwidth: %d bytes, %v", len(line), err)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("24 KB at 16 KB/s took %v, want >= 1s", took)
	}

	l3, _ := newLink(t)
	c3, r3 := dial(t, l3.Listen)
	if err := l3.Apply(netfault.Fault{Kind: netfault.Reset}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c3, r3, 2*time.Second); err == nil || timeout(err) {
		t.Fatalf("reset: %v, want the connection ended", err)
	}
}

func TestFaultValidate(t *testing.T) {
	for _, f := range []netfault.Fault{
		{Kind: "flood"},
		{Kind: netfault.Partition, Direction: "sideways"},
		{Kind: netfault.Delay},
		{Kind: netfault.Delay, Latency: time.Second, Jitter: 2 * time.Second},
		{Kind: netfault.Delay, Latency: 2 * time.Minute},
		{Kind: netfault.Bandwidth},
	} {
		if err := f.Validate(); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
	if err := (netfault.Fault{Kind: netfault.Delay, Latency: 300 * time.Millisecond, Jitter: 100 * time.Millisecond}).Validate(); err != nil {
		t.Error(err)
	}
}
