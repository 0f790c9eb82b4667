// Package loadgen rehearses game days. A Scenario (YAML or JSON; examples in
// scenarios/) describes a live event's timeline: the device population and its
// mix, the connect ramp, prefetch TTLs and jitter, stage changes, disconnect
// waves with backoff, faults, and the fleet.
//
// Simulate runs a scenario at full scale without sockets, on exact aggregate
// buckets (per-second counts, convolved with the jitter and backoff
// distributions), so 100M devices take seconds. It writes the same report as a
// live run (report.json, and report.html with inline SVG plots).
//
// loadgen imports only the clients (the device client, internal/device, and
// the public producer client, broadcaster/producer), the wire format and its
// own code, never a server, so it can run against a deployment it did not start.
package loadgen
