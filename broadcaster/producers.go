package broadcaster

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"golang.org/x/time/rate"

	"github.com/stagecast/stagecast/internal/wire"
)

// Producer is one named producer token: who is acting (for the audit log, never
// the token) and which events it may change.
type Producer struct {
	Name  string `json:"name"`
	Token string `json:"token"`
	// Events the token may act on (an id, or a prefix ending in *); empty = every event.
	Events []string `json:"events,omitempty"`
}

// producerSet is the token table, swapped whole on reload.
type producerSet struct {
	byHash map[[32]byte]*producerEntry
}

type producerEntry struct {
	name   string
	events wire.Patterns // nil: any event
	// limit bounds the producer's requests (Config.ProducerRate); set by
	// SetProducers, kept across reloads for a producer of the same name.
	limit *rate.Limiter
}

// placeholders are fragments of tokens that ship in examples; a token containing
// one is refused at start.
var placeholders = []string{"replace", "change-me", "changeme", "change_me", "placeholder", "example",
	"password", "secret", "insecure", "todo", "xxxx", "default", "your-token", "token-here"}

// CheckTokenStrength refuses known placeholders and low-entropy tokens: at least
// 16 characters, 8 distinct ones, and 64 bits of Shannon entropy over its
// characters (a 16-byte random hex or base64 token has 64 to 128).
func CheckTokenStrength(tok string) error {
	if len(tok) < 16 {
		return fmt.Errorf("a producer token must be at least 16 characters (it has %d)", len(tok))
	}
	low := strings.ToLower(tok)
	for _, p := range placeholders {
		if strings.Contains(low, p) {
			return fmt.Errorf("the producer token looks like a placeholder (contains %q): generate one, e.g. openssl rand -hex 24", p)
		}
	}
	counts := map[rune]int{}
	for _, r := range tok {
		counts[r]++
	}
	if len(counts) < 8 {
		return fmt.Errorf("the producer token has only %d distinct characters: generate one, e.g. openssl rand -hex 24", len(counts))
	}
	var h float64
	n := float64(len(tok))
	for _, c := range counts {
		p := float64(c) / n
		h -= p * math.Log2(p)
	}
	if bits := h * n; bits < 64 {
		return fmt.Errorf("the producer token carries about %.0f bits of entropy, at least 64 needed: generate one, e.g. openssl rand -hex 24", bits)
	}
	return nil
}

// newProducerSet validates ps: names unique and non-empty, tokens strong and
// unique, event patterns well formed.
func newProducerSet(ps []Producer) (*producerSet, error) {
	if len(ps) == 0 {
		return nil, errors.New("broadcaster: no producer token (set --producer-token, --producer-token-file or --producer-tokens)")
	}
	set := &producerSet{byHash: make(map[[32]byte]*producerEntry, len(ps))}
	names := map[string]bool{}
	for i, p := range ps {
		if p.Name == "" || len(p.Name) > 64 || strings.ContainsFunc(p.Name, func(r rune) bool { return r <= ' ' || r > '~' }) {
			return nil, fmt.Errorf("producer %d: name must be 1-64 printable characters without spaces", i+1)
		}
		if names[p.Name] {
			return nil, fmt.Errorf("producer %q: name used twice", p.Name)
		}
		names[p.Name] = true
		if err := CheckTokenStrength(p.Token); err != nil {
			return nil, fmt.Errorf("producer %q: %w", p.Name, err)
		}
		if err := wire.CheckPatterns(p.Events); err != nil {
			return nil, fmt.Errorf("producer %q: %w", p.Name, err)
		}
		h := sha256.Sum256([]byte(p.Token))
		if _, dup := set.byHash[h]; dup {
			return nil, fmt.Errorf("producer %q: token shared with another producer", p.Name)
		}
		e := &producerEntry{name: p.Name}
		if len(p.Events) > 0 {
			e.events = wire.Patterns(p.Events)
		}
		set.byHash[h] = e
	}
	return set, nil
}

// ProducersFile is the format of --producer-tokens: {"producers": [...]}.
type ProducersFile struct {
	Producers []Producer `json:"producers"`
}

// LoadProducers reads a producer tokens file.
func LoadProducers(path string) ([]Producer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("producer tokens: %w", err)
	}
	ps, err := ParseProducers(b)
	if err != nil {
		return nil, fmt.Errorf("producer tokens %s: %w", path, err)
	}
	return ps, nil
}

// ParseProducers decodes a producer tokens file (unknown fields refused).
func ParseProducers(b []byte) ([]Producer, error) {
	var f ProducersFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	return f.Producers, nil
}

// SetProducers replaces the producer tokens (rotation without a restart: list
// the new token beside the old one, move producers over, then drop the old).
// On error the current set stays.
func (s *Server) SetProducers(ps []Producer) error {
	set, err := newProducerSet(ps)
	if err != nil {
		return err
	}
	old := map[string]*rate.Limiter{}
	if cur := s.producers.Load(); cur != nil {
		for _, e := range cur.byHash {
			old[e.name] = e.limit
		}
	}
	for _, e := range set.byHash {
		if e.limit = old[e.name]; e.limit == nil {
			e.limit = rate.NewLimiter(rate.Limit(s.cfg.ProducerRate), s.cfg.ProducerBurst)
			if s.cfg.ProducerRate < 0 {
				e.limit = rate.NewLimiter(rate.Inf, 0)
			}
		}
	}
	s.producers.Store(set)
	names := make([]string, 0, len(ps))
	for _, p := range ps {
		names = append(names, p.Name)
	}
	s.log.Info("producer tokens loaded", "producers", names)
	return nil
}
