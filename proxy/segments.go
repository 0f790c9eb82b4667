package proxy

import "sync"

// Delivery counts for the analytics stream are split by (platform, segment)
// cell. Platforms are a fixed set (platformNames); segments are whatever the
// devices' tokens (or, without tokens, their query strings) name, so a proxy
// gives its own slot to the first maxSegments distinct segments it sees and
// counts every later one as otherSegment. Counters are arrays of numCells: no
// allocation on the fanout path, no unbounded keys.
const (
	maxSegments  = 31
	numSegSlots  = maxSegments + 2 // slot 0: no segment; the last: otherSegment
	numCells     = numPlatforms * numSegSlots
	otherSegment = "(other)"
)

// labelTable gives the first n distinct labels (segments, note types) a
// slot of their own, 1 to n, and every later one slot n+1 (other): counters
// indexed by slot stay bounded whatever devices or producers send. Slot 0 is
// the empty label. Slots are never reused while the proxy runs, so a slot
// means one label in every counter.
type labelTable struct {
	mu    sync.RWMutex
	idx   map[string]int
	names []string // by slot: "", the n labels, other
	n     int      // named slots taken
}

func newLabelTable(n int, other string) *labelTable {
	t := &labelTable{idx: make(map[string]int), names: make([]string, n+2)}
	t.names[n+1] = other
	return t
}

// slot returns label's slot, taking a free one for a new label.
func (t *labelTable) slot(label string) int {
	if label == "" {
		return 0
	}
	t.mu.RLock()
	i, ok := t.idx[label]
	t.mu.RUnlock()
	if ok {
		return i
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.idx[label]; ok {
		return i
	}
	if t.n >= len(t.names)-2 {
		return len(t.names) - 1
	}
	t.n++
	t.idx[label] = t.n
	t.names[t.n] = label
	return t.n
}

// name is slot i's label ("" for none).
func (t *labelTable) name(i int) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.names[i]
}

func newSegmentTable() *labelTable { return newLabelTable(maxSegments, otherSegment) }

// cellOf is the cell index of a platform index and a segment slot.
func cellOf(plat, seg uint8) uint16 { return uint16(plat)*numSegSlots + uint16(seg) }

// Coarse time-to-device buckets (ms, upper bounds) for the per-platform
// histograms of the analytics stream: a fixed set of atomic counters per
// platform, where the whole version's histogram keeps the report's fine ones.
var platLatBounds = [...]int64{50, 100, 250, 500, 1000, 2000, 5000, 10000, 30000, 60000, 300000, maxLatencyMS}

const numLatBounds = len(platLatBounds)

func latBucket(ms int64) int {
	for i, b := range platLatBounds {
		if ms <= b {
			return i
		}
	}
	return numLatBounds - 1
}
