package proxy

import (
	"fmt"
	"sync"
	"testing"
)

// TestSegmentTableBounded: the first maxSegments distinct segments get their
// own slot, every later one (a hostile or careless device minting segments)
// counts as "(other)", and a slot keeps its segment, under concurrent use.
func TestSegmentTableBounded(t *testing.T) {
	st := newSegmentTable()
	if st.slot("") != 0 || st.name(0) != "" {
		t.Fatal("no segment is slot 0")
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				_ = st.slot(fmt.Sprintf("seg-%d", (i+g*7)%100))
			}
		}()
	}
	wg.Wait()
	named := map[string]bool{}
	for i := 1; i <= maxSegments; i++ {
		n := st.name(i)
		if n == "" || named[n] {
			t.Fatalf("slot %d is %q", i, n)
		}
		named[n] = true
		if st.slot(n) != i {
			t.Fatalf("segment %s moved from slot %d", n, i)
		}
	}
	for i := range 100 {
		s := fmt.Sprintf("seg-%d", i)
		if got := st.slot(s); !named[s] && got != numSegSlots-1 {
			t.Fatalf("segment %s past the bound got slot %d", s, got)
		}
	}
	if st.name(numSegSlots-1) != otherSegment {
		t.Fatal("the last slot is not (other)")
	}
	if c := cellOf(uint8(numPlatforms-1), uint8(numSegSlots-1)); int(c) != numCells-1 {
		t.Fatalf("last cell %d of %d", c, numCells)
	}
}

func TestLatBucket(t *testing.T) {
	for ms, want := range map[int64]int64{1: 50, 50: 50, 51: 100, 999: 1000, 60001: 300000, maxLatencyMS: maxLatencyMS, maxLatencyMS + 1: maxLatencyMS} {
		if got := platLatBounds[latBucket(ms)]; got != want {
			t.Errorf("%d ms in the bucket of %d, want %d", ms, got, want)
		}
	}
}
