package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash/fnv"
	"sort"
	"time"
)

// DigestLen is the length of a payload digest in hex characters (48 bits).
const DigestLen = 12

// StageDigest is the digest of one stage key's payloads (default and every
// segment): the first 48 bits of SHA-256 over their compact JSON, segments in
// key order. A device compares it with the digest of the entry it prefetched:
// one value for every segment, so a stage frame (encoded once for all devices)
// can carry it.
func StageDigest(p StagePayloads) string {
	h := sha256.New()
	var buf bytes.Buffer
	write := func(name string, raw json.RawMessage) {
		buf.Reset()
		if json.Compact(&buf, raw) != nil {
			buf.Write(raw)
		}
		h.Write([]byte(name))
		h.Write([]byte{0})
		h.Write(buf.Bytes())
		h.Write([]byte{0})
	}
	write("", p.Default)
	segs := make([]string, 0, len(p.Segments))
	for s := range p.Segments {
		segs = append(segs, s)
	}
	sort.Strings(segs)
	for _, s := range segs {
		write(s, p.Segments[s])
	}
	return hex.EncodeToString(h.Sum(nil))[:DigestLen]
}

// Digests returns the digest of every stage key of m.
func (m *StageMap) Digests() map[string]string {
	out := make(map[string]string, len(m.Stages))
	for k, p := range m.Stages {
		out[k] = StageDigest(p)
	}
	return out
}

// ValidDigest reports whether s looks like a StageDigest.
func ValidDigest(s string) bool {
	if len(s) != DigestLen {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// RefetchDelay is when, within window, a device refetches a stage map whose
// payload for a broadcast key differs from the one it holds: slot
// fnv32a(device) mod slots, of slots equal slots. Reproducible per device and
// uniform over a population by construction (not at random), so a stage whose
// payload changed after the prefetch brings a flat refetch rate, not a herd.
func RefetchDelay(device string, window time.Duration, slots int) time.Duration {
	if slots <= 0 || window <= 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(device))
	slot := int(h.Sum32() % uint32(slots))
	return window * time.Duration(slot) / time.Duration(slots)
}
