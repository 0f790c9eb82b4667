package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// StageMap is what a producer PUTs for an event and a device prefetches: for each
// stage key, the payload to show, by default and per segment.
type StageMap struct {
	Stages map[string]StagePayloads `json:"stages"`
	// TTLSeconds is the base TTL devices cache the map for (jittered per response).
	// 0 means the prefetch server's default.
	TTLSeconds int `json:"ttl_seconds,omitempty"`
}

// StagePayloads is one stage's payloads. Payloads are arbitrary JSON values.
type StagePayloads struct {
	Default  json.RawMessage            `json:"default"`
	Segments map[string]json.RawMessage `json:"segments,omitempty"`
}

// Limits of a stage map.
const (
	MaxStages         = 1024
	MaxSegments       = 256 // per stage
	MaxMapTTLSeconds  = 86400
	DefaultMaxMapSize = 1 << 20 // bytes of JSON
)

// ParseStageMap decodes and validates a stage map. Unknown fields are errors, so a
// typo in a producer's file does not silently drop data.
func ParseStageMap(b []byte) (StageMap, error) {
	var m StageMap
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return StageMap{}, fmt.Errorf("stage map: invalid JSON: %w", err)
	}
	if dec.More() {
		return StageMap{}, errors.New("stage map: data after the JSON object")
	}
	if len(m.Stages) == 0 {
		return StageMap{}, errors.New(`stage map: "stages" is empty or missing`)
	}
	if len(m.Stages) > MaxStages {
		return StageMap{}, fmt.Errorf("stage map: %d stages, at most %d", len(m.Stages), MaxStages)
	}
	if m.TTLSeconds < 0 || m.TTLSeconds > MaxMapTTLSeconds {
		return StageMap{}, fmt.Errorf("stage map: ttl_seconds %d outside 0..%d", m.TTLSeconds, MaxMapTTLSeconds)
	}
	for key, p := range m.Stages {
		if err := CheckID("stage", key); err != nil {
			return StageMap{}, fmt.Errorf("stage map: %w", err)
		}
		if len(bytes.TrimSpace(p.Default)) == 0 || bytes.Equal(bytes.TrimSpace(p.Default), []byte("null")) {
			return StageMap{}, fmt.Errorf(`stage map: stage %s has no "default" payload`, key)
		}
		if len(p.Segments) > MaxSegments {
			return StageMap{}, fmt.Errorf("stage map: stage %s has %d segments, at most %d", key, len(p.Segments), MaxSegments)
		}
		for seg := range p.Segments {
			if err := CheckID("segment", seg); err != nil {
				return StageMap{}, fmt.Errorf("stage map: stage %s: %w", key, err)
			}
		}
	}
	return m, nil
}

// Payload returns the payload of stage key for segment: the segment's variant if
// the stage has one, else the default.
func (m *StageMap) Payload(key, segment string) (json.RawMessage, bool) {
	p, ok := m.Stages[key]
	if !ok {
		return nil, false
	}
	if v, ok := p.Segments[segment]; ok && segment != "" {
		return v, true
	}
	return p.Default, true
}
