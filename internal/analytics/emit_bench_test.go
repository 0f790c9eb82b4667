package analytics_test

import (
	"testing"

	"github.com/stagecast/stagecast/internal/analytics"
)

// BenchmarkEmitDeviceSample is the cost of one sampled device's record on the
// proxy (encode, headers, hand-off to the client's buffer), against a kfake
// broker: what a 1 % device sample adds per delivery is 2 x 1 % of it (a stage
// and an ack record per sampled device and broadcast).
func BenchmarkEmitDeviceSample(b *testing.B) {
	c := broker(b)
	p := producer(b, c, analytics.Config{MaxBufferedRecords: 1 << 20, MaxBufferedBytes: 1 << 30})
	d := struct {
		Kind, Device, Platform, Segment, Event string
		V                                      uint64
		LatencyMS                              int64
		Reason                                 string
		AtMS                                   int64
	}{"stage", "device-000123", "tv", "eu", "fight-2026-11-15", 42, 87, "", 1796160000123}
	b.ReportAllocs()
	for b.Loop() {
		p.EmitKeyed(analytics.TopicDevices, "device_stage", d.Event, d.Device, d)
	}
}
