package proxy

// DeviceSample is one event of a sampled device (Config.SampleDevice).
type DeviceSample struct {
	Kind     string // connect, stage, ack, disconnect
	Device   string
	Platform string // the platform label (a fixed set)
	Segment  string
	Event    string // stage, ack
	V        uint64 // stage, ack
	// LatencyMS: stage: from the stage's ts to the write to the device.
	LatencyMS int64
	// Reason: disconnect: the close the proxy sent ("1012 proxy draining"), or
	// "closed" when the device or the network ended it.
	Reason string
	AtMS   int64
}

// sample reports an event of a sampled connection (a no-op for the others).
func (c *conn) sample(d DeviceSample) {
	if !c.sampled {
		return
	}
	d.Device, d.Platform, d.Segment, d.AtMS = c.device, c.label, c.segment, c.s.cfg.Now().UnixMilli()
	c.s.cfg.OnDeviceSample(d)
}
