package proxy

import (
	"math/rand/v2"
	"testing"
)

// The ping wheel's slots hold each conn once, at the place the conn records,
// through any order of adds and removes; a second add or remove is a no-op.
func TestPingWheelPlaces(t *testing.T) {
	w := &pingWheel{}
	slots := rand.New(rand.NewPCG(1, 2))
	conns := make([]*conn, 1000)
	for i := range conns {
		conns[i] = &conn{pingSlot: -1}
		w.add(conns[i], slots.IntN(pingSlots))
		w.add(conns[i], slots.IntN(pingSlots))
	}
	r := rand.New(rand.NewPCG(3, 4))
	in := map[*conn]bool{}
	for _, c := range conns {
		in[c] = true
	}
	for _, i := range r.Perm(len(conns))[:600] {
		w.remove(conns[i])
		w.remove(conns[i])
		delete(in, conns[i])
	}
	total := 0
	for slot := range w.slots {
		for idx, c := range w.slots[slot] {
			total++
			if !in[c] {
				t.Fatalf("a removed conn is still in slot %d", slot)
			}
			if int(c.pingSlot) != slot || int(c.pingIdx) != idx {
				t.Fatalf("conn records slot %d index %d, sits at %d %d", c.pingSlot, c.pingIdx, slot, idx)
			}
		}
	}
	if total != len(in) {
		t.Fatalf("%d conns in the wheel, want %d", total, len(in))
	}
	for _, c := range conns {
		if !in[c] && c.pingSlot != -1 {
			t.Fatalf("a removed conn records slot %d", c.pingSlot)
		}
	}
}
