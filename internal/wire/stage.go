package wire

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Stage is one stage change of an event: what the broadcaster assigns, the engine
// stores and publishes, and a proxy delivers.
type Stage struct {
	Event string `json:"event"`
	Key   string `json:"key"`
	// V is the event's version, strictly increasing, > 0.
	V uint64 `json:"v"`
	// TS is the broadcaster's wall clock at the change, Unix milliseconds.
	TS int64 `json:"ts"`
	// Target, when set, restricts delivery to matching devices (extension).
	Target *Target `json:"target,omitempty"`
	// Priority (extension) is "critical" for a change the producer marked
	// critical: proxies write it before other frames. Empty otherwise.
	Priority string `json:"priority,omitempty"`
	// Digest (extension) is the StageDigest of the key's payloads in the stored
	// stage map when the change was made; empty when the map has no such key.
	Digest string `json:"d,omitempty"`
	// Paced (extension): proxies release this change in waves (see the proxy's
	// PacedRate); the frame devices get is the same, later. Not in frames.
	Paced bool `json:"paced,omitempty"`
	// Arm, on engine messages only (never sent to devices), makes this an
	// armed stage (to fire at Arm.At with version V) or its cancellation.
	Arm *Arm `json:"arm,omitempty"`
}

// Arm is a scheduled stage as proxies hold it: fire at At (Unix ms), or, with
// Cancel, the schedule ID is cancelled.
type Arm struct {
	ID     string `json:"id"`
	At     int64  `json:"at"`
	Cancel bool   `json:"cancel,omitempty"`
}

// Target selects devices by platform and segment (a contract extension). An empty
// list matches every device; a device matches when its platform is in Platforms
// (or Platforms is empty) and its segment is in Segments (or Segments is empty).
type Target struct {
	Platforms []string `json:"platforms,omitempty"`
	Segments  []string `json:"segments,omitempty"`
}

// MaxTargetValues bounds each list of a Target.
const MaxTargetValues = 32

// Matches reports whether a device with this platform and segment is selected.
// A nil Target matches every device.
func (t *Target) Matches(platform, segment string) bool {
	if t == nil {
		return true
	}
	if len(t.Platforms) > 0 && !slices.Contains(t.Platforms, platform) {
		return false
	}
	if len(t.Segments) > 0 && !slices.Contains(t.Segments, segment) {
		return false
	}
	return true
}

// Equal reports whether t and u select the same devices as written (nil and
// empty lists are equal).
func (t *Target) Equal(u *Target) bool {
	if t.IsZero() || u.IsZero() {
		return t.IsZero() == u.IsZero()
	}
	return slices.Equal(t.Platforms, u.Platforms) && slices.Equal(t.Segments, u.Segments)
}

// IsZero reports whether the target selects every device.
func (t *Target) IsZero() bool {
	return t == nil || (len(t.Platforms) == 0 && len(t.Segments) == 0)
}

// Validate checks every value of the target against the id grammar.
func (t *Target) Validate() error {
	if t == nil {
		return nil
	}
	for name, list := range map[string][]string{"platform": t.Platforms, "segment": t.Segments} {
		if len(list) > MaxTargetValues {
			return fmt.Errorf("target has %d %ss, at most %d allowed", len(list), name, MaxTargetValues)
		}
		for _, v := range list {
			if err := CheckID("target "+name, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// Validate checks a stage read from the engine or the network.
func (s *Stage) Validate() error {
	if err := CheckID("event", s.Event); err != nil {
		return err
	}
	if err := CheckID("stage", s.Key); err != nil {
		return err
	}
	if s.V == 0 {
		return fmt.Errorf("stage %s/%s has version 0", s.Event, s.Key)
	}
	if s.Digest != "" && !ValidDigest(s.Digest) {
		return fmt.Errorf("stage %s/%s: digest %q is not %d hex characters", s.Event, s.Key, truncate(s.Digest, 32), DigestLen)
	}
	if s.Priority != "" && s.Priority != PriorityCritical.String() {
		return fmt.Errorf("stage %s/%s: priority %q (only critical is kept)", s.Event, s.Key, truncate(s.Priority, 32))
	}
	return s.Target.Validate()
}

// MarshalStage encodes a stage as the engine publishes and stores it.
func MarshalStage(s Stage) ([]byte, error) {
	if s.Target.IsZero() {
		s.Target = nil
	}
	return json.Marshal(s)
}

// UnmarshalStage decodes and validates a stage published or stored by the engine.
func UnmarshalStage(b []byte) (Stage, error) {
	var s Stage
	if err := json.Unmarshal(b, &s); err != nil {
		return Stage{}, fmt.Errorf("decode stage: %w", err)
	}
	if err := s.Validate(); err != nil {
		return Stage{}, fmt.Errorf("decode stage: %w", err)
	}
	return s, nil
}
