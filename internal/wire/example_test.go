package wire_test

import (
	"fmt"

	"github.com/stagecast/stagecast/internal/wire"
)

func ExampleAppendStage() {
	s := wire.Stage{Event: "fight-2026-11-15", Key: "round-3", V: 42, TS: 1763236800123}
	fmt.Println(string(wire.AppendStage(nil, &s)))
	// Output: {"op":"stage","event":"fight-2026-11-15","key":"round-3","v":42,"ts":1763236800123}
}

func ExampleParseDeviceFrame() {
	f, err := wire.ParseDeviceFrame([]byte(`{"op":"sub","events":{"fight-2026-11-15":41}}`))
	fmt.Println(f.Op, f.Sub["fight-2026-11-15"], err)
	_, err = wire.ParseDeviceFrame([]byte(`{"op":"sub","events":{"Not An Id":1}}`))
	fmt.Println(err)
	// Output:
	// sub 41 <nil>
	// bad_request: event id "Not An Id" does not match [a-z0-9][a-z0-9._-]{0,127}
}
