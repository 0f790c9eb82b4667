package notifybench

import (
	"math"
	"testing"
)

func TestP99SinceReadsTheDifference(t *testing.T) {
	bounds := []float64{0.0005, 0.001, 0.002, 0.004}
	prev := histSnap{bounds: bounds, counts: []uint64{90, 100, 100, 100}, total: 100}
	// 100 more notes: 50 under 1 ms, 49 under 2 ms, 1 under 4 ms.
	h := histSnap{bounds: bounds, counts: []uint64{90, 150, 199, 200}, total: 200}
	if got := h.p99Since(prev); got != 2 {
		t.Fatalf("p99 = %v ms, want 2 (the 99th of 100 new notes is under 2 ms)", got)
	}
	if got := h.p99Since(histSnap{}); got != 2 {
		t.Fatalf("p99 against an empty snapshot = %v ms, want 2 (199 of 200 under 2 ms)", got)
	}
	h.total = 203 // 3 of 103 new notes past the last bucket
	if got := h.p99Since(prev); !math.IsInf(got, 1) {
		t.Fatalf("p99 = %v, want +Inf (past the last bucket)", got)
	}
	if got := prev.p99Since(prev); got != 0 {
		t.Fatalf("p99 of nothing = %v, want 0", got)
	}
}
