package proxy_test

import (
	"strings"
	"testing"

	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/proxy"
)

// TestFramesLargerThanTheReadBuffer: the proxy keeps a small read buffer per
// connection (memory per idle device), yet a frame up to ReadLimit is read
// whole, and two frames sent back to back, one large and one small, both
// apply in order.
func TestFramesLargerThanTheReadBuffer(t *testing.T) {
	eng := memEngine(t)
	_, url := startProxy(t, eng, proxy.Config{})
	set(t, eng, "a", "k1", nil)
	set(t, eng, "b", "k1", nil)
	d := dial(t, url)
	pad := strings.Repeat("x", 3500) // the default ReadLimit is 4096
	d.send(`{"op":"sub","events":{"a":0},"pad":"` + pad + `"}`)
	d.send(`{"op":"sub","events":{"b":0}}`)
	got := map[string]bool{}
	for len(got) < 2 {
		f := d.expect(wire.OpStage)
		got[f.Event] = true
	}
}
