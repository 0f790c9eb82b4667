// Package devicetoken is stagecast's device identity: Ed25519-signed JWTs
// (RFC 7519, alg EdDSA, a kid in the header) that a device presents on its
// WebSocket upgrade and to the prefetch API.
//
// Servers hold only public keys (a JWKS file; several keys = rotation) and
// verify every token locally, once per connection, with no backend call: a
// reconnect storm costs CPU on the edge node it lands on, never a round trip.
// Only the CLI (stagecast token mint) holds a private key.
//
// Claims are checked in one place (Verifier.Verify): signature by kid, exp
// required and in the future, nbf (if present) within a minute of now, sub a
// device id, and plt, seg, evs well formed. Tokens are never logged: errors
// name what was wrong, never the token.
package devicetoken

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/stagecast/stagecast/internal/filewatch"
	"github.com/stagecast/stagecast/internal/wire"
)

// MaxTokenLen is the longest token a server reads; longer ones are rejected
// before any parsing.
const MaxTokenLen = 4096

// Claims are what a device token says about its holder.
type Claims struct {
	Device   string        // sub: device id (required)
	Member   string        // mid: member (account) id, optional
	Platform string        // plt, optional
	Segment  string        // seg, optional
	Events   wire.Patterns // evs: event patterns the device may subscribe to; nil = any
	Expiry   time.Time     // exp (required)
}

// custom is the private-claims part of the JWT body.
type custom struct {
	Member   string   `json:"mid,omitempty"`
	Platform string   `json:"plt,omitempty"`
	Segment  string   `json:"seg,omitempty"`
	Events   []string `json:"evs,omitempty"`
}

// Errors Verify wraps; each means HTTP 401.
var (
	ErrMissing    = errors.New("device token missing")
	ErrMalformed  = errors.New("device token malformed")
	ErrSignature  = errors.New("device token signature invalid")
	ErrUnknownKey = errors.New("device token signed with an unknown key")
	ErrExpired    = errors.New("device token expired")
	ErrClaims     = errors.New("device token claims invalid")
)

// check validates claim values (shared by Verify and Mint).
func (c *Claims) check() error {
	if c.Device == "" || len(c.Device) > 128 || strings.ContainsFunc(c.Device, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return fmt.Errorf("%w: sub must be 1-128 printable characters", ErrClaims)
	}
	if len(c.Member) > 128 || strings.ContainsFunc(c.Member, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return fmt.Errorf("%w: mid must be at most 128 printable characters", ErrClaims)
	}
	if c.Platform != "" && !wire.ValidID(c.Platform) {
		return fmt.Errorf("%w: plt is not a valid id", ErrClaims)
	}
	if c.Segment != "" && !wire.ValidID(c.Segment) {
		return fmt.Errorf("%w: seg is not a valid id", ErrClaims)
	}
	if err := wire.CheckPatterns(c.Events); err != nil {
		return fmt.Errorf("%w: evs: %v", ErrClaims, err)
	}
	return nil
}

// Verifier checks device tokens against a public key set that can be replaced
// at any time (rotation). It is safe for concurrent use.
type Verifier struct {
	keys atomic.Pointer[map[string]ed25519.PublicKey] // kid -> key
	gen  atomic.Uint64                                // bumped by SetKeys: cached verdicts of older sets are void
	now  func() time.Time
}

// NewVerifier parses a JWKS (only Ed25519 "OKP" keys with a kid are kept; at
// least one is required). now is injected for tests (nil: time.Now).
func NewVerifier(jwks []byte, now func() time.Time) (*Verifier, error) {
	if now == nil {
		now = time.Now
	}
	v := &Verifier{now: now}
	if err := v.SetKeys(jwks); err != nil {
		return nil, err
	}
	return v, nil
}

// LoadVerifier reads a JWKS file.
func LoadVerifier(path string) (*Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("device keys: %w", err)
	}
	v, err := NewVerifier(b, nil)
	if err != nil {
		return nil, fmt.Errorf("device keys %s: %w", path, err)
	}
	return v, nil
}

// SetKeys replaces the key set; on error the old set stays.
func (v *Verifier) SetKeys(jwks []byte) error {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		return fmt.Errorf("not a JWKS: %w", err)
	}
	keys := make(map[string]ed25519.PublicKey)
	for _, k := range set.Keys {
		pub, ok := k.Key.(ed25519.PublicKey)
		if !ok || k.KeyID == "" {
			continue
		}
		keys[k.KeyID] = pub
	}
	if len(keys) == 0 {
		return errors.New("no Ed25519 public key with a kid in the key set")
	}
	v.keys.Store(&keys)
	v.gen.Add(1)
	return nil
}

// KeyIDs returns the kids of the current key set (for logs; never key material).
func (v *Verifier) KeyIDs() []string {
	var out []string
	for kid := range *v.keys.Load() {
		out = append(out, kid)
	}
	return out
}

// Verify checks tok and returns its claims. Every error wraps one of the Err*
// values above and never contains the token.
func (v *Verifier) Verify(tok string) (Claims, error) {
	if tok == "" {
		return Claims{}, ErrMissing
	}
	if len(tok) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	t, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(t.Headers) != 1 {
		return Claims{}, fmt.Errorf("%w: not a compact EdDSA JWS", ErrMalformed)
	}
	kid := t.Headers[0].KeyID
	key, ok := (*v.keys.Load())[kid]
	if !ok {
		return Claims{}, fmt.Errorf("%w (kid %q)", ErrUnknownKey, truncate(kid, 64))
	}
	var std jwt.Claims
	var cu custom
	if err := t.Claims(key, &std, &cu); err != nil {
		return Claims{}, ErrSignature
	}
	now := v.now()
	if std.Expiry == nil {
		return Claims{}, fmt.Errorf("%w: exp is required", ErrClaims)
	}
	if !now.Before(std.Expiry.Time()) {
		return Claims{}, ErrExpired
	}
	if std.NotBefore != nil && now.Add(time.Minute).Before(std.NotBefore.Time()) {
		return Claims{}, fmt.Errorf("%w: not valid before %s", ErrClaims, std.NotBefore.Time().UTC().Format(time.RFC3339))
	}
	c := Claims{Device: std.Subject, Member: cu.Member, Platform: cu.Platform, Segment: cu.Segment,
		Expiry: std.Expiry.Time()}
	if cu.Events != nil {
		c.Events = wire.Patterns(cu.Events)
	}
	if err := c.check(); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// Watch re-reads the JWKS at path every interval (in the background, until ctx
// ends) and swaps the key set in when the file changed: rotation without a
// restart. A file that does not parse is logged and the old set kept.
func (v *Verifier) Watch(ctx context.Context, path string, every time.Duration, log *slog.Logger) {
	filewatch.Watch(ctx, path, every, log.With("what", "device keys"), v.SetKeys)
}

// Signer mints device tokens with one private key.
type Signer struct {
	kid string
	key ed25519.PrivateKey
	now func() time.Time
}

// LoadSigner reads a private JWK written by Keygen.
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.Key.(ed25519.PrivateKey)
	if !ok || k.KeyID == "" {
		return nil, fmt.Errorf("signing key %s: not an Ed25519 private key with a kid", path)
	}
	return &Signer{kid: k.KeyID, key: priv, now: time.Now}, nil
}

// KeyID is the signer's kid.
func (s *Signer) KeyID() string { return s.kid }

// Mint returns a token for c valid for ttl from now (c.Expiry is ignored).
func (s *Signer) Mint(c Claims, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", errors.New("mint: ttl must be > 0")
	}
	if err := c.check(); err != nil {
		return "", err
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: s.key, KeyID: s.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	now := s.now()
	std := jwt.Claims{Subject: c.Device, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl))}
	return jwt.Signed(sig).Claims(std).Claims(custom{Member: c.Member, Platform: c.Platform, Segment: c.Segment, Events: c.Events}).Serialize()
}

// Keygen makes a new Ed25519 key with kid and returns the private JWK and the
// public JWK, both as JSON.
func Keygen(kid string) (private, public jose.JSONWebKey, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return private, public, err
	}
	private = jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: string(jose.EdDSA), Use: "sig"}
	public = jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: string(jose.EdDSA), Use: "sig"}
	return private, public, nil
}

// NewKeyPair makes a signer with a fresh key and the JWKS that verifies it (for
// tests and tools that need both in memory).
func NewKeyPair(kid string) (*Signer, []byte, error) {
	priv, pub, err := Keygen(kid)
	if err != nil {
		return nil, nil, err
	}
	jwks, err := AddToKeySet(nil, pub)
	if err != nil {
		return nil, nil, err
	}
	return &Signer{kid: kid, key: priv.Key.(ed25519.PrivateKey), now: time.Now}, jwks, nil
}

// NewTestPair is NewKeyPair with the verifier of the key set made too (for tests).
func NewTestPair(kid string) (*Signer, *Verifier, error) {
	s, jwks, err := NewKeyPair(kid)
	if err != nil {
		return nil, nil, err
	}
	v, err := NewVerifier(jwks, nil)
	return s, v, err
}

// AddToKeySet returns jwks (may be empty) with pub added; keys with the same kid
// are replaced. Existing keys stay: during a rotation both verify.
func AddToKeySet(jwks []byte, pub jose.JSONWebKey) ([]byte, error) {
	var set jose.JSONWebKeySet
	if len(jwks) > 0 {
		if err := json.Unmarshal(jwks, &set); err != nil {
			return nil, fmt.Errorf("existing key set: %w", err)
		}
	}
	keep := set.Keys[:0]
	for _, k := range set.Keys {
		if k.KeyID != pub.KeyID {
			keep = append(keep, k)
		}
	}
	set.Keys = append(keep, pub)
	return json.MarshalIndent(set, "", "  ")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Cache remembers verified tokens (by SHA-256, never the token itself) so a
// device that sends its token on every request costs one hash, not one
// signature check. Expiry is checked on every hit. Safe for concurrent use.
type Cache struct {
	v   *Verifier
	lru *lru.Cache[[32]byte, cached]
}

type cached struct {
	c   Claims
	gen uint64
}

// NewCache wraps v with a cache of size verified tokens.
func NewCache(v *Verifier, size int) *Cache {
	l, _ := lru.New[[32]byte, cached](max(size, 1))
	return &Cache{v: v, lru: l}
}

// Verify is Verifier.Verify through the cache.
func (c *Cache) Verify(tok string) (Claims, error) {
	if tok == "" || len(tok) > MaxTokenLen {
		return c.v.Verify(tok)
	}
	h := sha256.Sum256([]byte(tok))
	gen := c.v.gen.Load()
	if e, ok := c.lru.Get(h); ok && e.gen == gen {
		if !c.v.now().Before(e.c.Expiry) {
			c.lru.Remove(h)
			return Claims{}, ErrExpired
		}
		return e.c, nil
	}
	cl, err := c.v.Verify(tok)
	if err == nil {
		c.lru.Add(h, cached{c: cl, gen: gen})
	}
	return cl, err
}

// FromHeader returns the bearer token of r's Authorization header, if any.
func FromHeader(r *http.Request) (string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return strings.TrimSpace(tok), ok
}
