package wire

import "testing"

func BenchmarkAppendStage(b *testing.B) {
	s := Stage{Event: "fight-2026-11-15", Key: "round-3", V: 42, TS: 1763236800123}
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendStage(buf[:0], &s)
	}
}

func BenchmarkParseDeviceFrameSub(b *testing.B) {
	f := []byte(`{"op":"sub","events":{"fight-2026-11-15":41}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseDeviceFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDeviceFrameAck(b *testing.B) {
	f := []byte(`{"op":"ack","event":"fight-2026-11-15","v":42}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseDeviceFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}
