package devicetoken

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/stagecast/stagecast/internal/wire"
)

type privKey = ed25519.PrivateKey

// newPair returns a signer with kid and the JWKS that verifies it.
func newPair(t testing.TB, kid string) (*Signer, []byte) {
	t.Helper()
	s, jwks, err := NewKeyPair(kid)
	if err != nil {
		t.Fatal(err)
	}
	return s, jwks
}

func TestMintVerify(t *testing.T) {
	s, jwks := newPair(t, "k1")
	v, err := NewVerifier(jwks, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Mint(Claims{Device: "d7", Member: "m1", Platform: "tv", Segment: "s1", Events: wire.Patterns{"fight-*", "nfl-xmas"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Device != "d7" || c.Member != "m1" || c.Platform != "tv" || c.Segment != "s1" {
		t.Fatalf("claims %+v", c)
	}
	for ev, want := range map[string]bool{"fight-2026": true, "nfl-xmas": true, "nfl-xmas2": false, "other": false} {
		if got := c.Events.Match(ev); got != want {
			t.Errorf("evs match %s = %v, want %v", ev, got, want)
		}
	}
	if d := time.Until(c.Expiry); d < 59*time.Minute || d > time.Hour {
		t.Errorf("expiry in %v", d)
	}
	// No evs claim: any event.
	tok, _ = s.Mint(Claims{Device: "d8"}, time.Minute)
	if c, err := v.Verify(tok); err != nil || c.Events != nil || !c.Events.Match("anything") {
		t.Fatalf("no evs: %+v %v", c, err)
	}
}

func TestVerifyRejects(t *testing.T) {
	s, jwks := newPair(t, "k1")
	other, _ := newPair(t, "k1") // same kid, another key: a forgery
	stranger, _ := newPair(t, "k9")
	now := time.Now()
	v, _ := NewVerifier(jwks, func() time.Time { return now })
	good, _ := s.Mint(Claims{Device: "d1"}, time.Minute)

	parts := strings.Split(good, ".")
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(body), `"d1"`, `"d2"`, 1))) + "." + parts[2]
	forged, _ := other.Mint(Claims{Device: "d1"}, time.Minute)
	unknown, _ := stranger.Mint(Claims{Device: "d1"}, time.Minute)
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"k1"}`)) + "." + parts[1] + "."
	noExp := signRaw(t, s, jwt.Claims{Subject: "d1"}, custom{})
	badEvs := signRaw(t, s, jwt.Claims{Subject: "d1", Expiry: jwt.NewNumericDate(now.Add(time.Minute))}, custom{Events: []string{"Bad Pattern"}})
	noSub := signRaw(t, s, jwt.Claims{Expiry: jwt.NewNumericDate(now.Add(time.Minute))}, custom{})

	cases := []struct {
		name string
		tok  string
		want error
	}{
		{"empty", "", ErrMissing},
		{"garbage", "not.a.token", ErrMalformed},
		{"huge", strings.Repeat("a", MaxTokenLen+1), ErrMalformed},
		{"tampered claims", tampered, ErrSignature},
		{"another key, same kid", forged, ErrSignature},
		{"unknown kid", unknown, ErrUnknownKey},
		{"alg none", none, ErrMalformed},
		{"no exp", noExp, ErrClaims},
		{"bad evs", badEvs, ErrClaims},
		{"no sub", noSub, ErrClaims},
	}
	for _, c := range cases {
		_, err := v.Verify(c.tok)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
		if err != nil && c.tok != "" && len(c.tok) > 20 && strings.Contains(err.Error(), c.tok[len(c.tok)-20:]) {
			t.Errorf("%s: error message contains the token", c.name)
		}
	}
	// Expiry is exact: valid a nanosecond before, rejected at exp.
	c, err := v.Verify(good)
	if err != nil {
		t.Fatal(err)
	}
	now = c.Expiry
	if _, err := v.Verify(good); !errors.Is(err, ErrExpired) {
		t.Fatalf("at exp: %v, want ErrExpired", err)
	}
}

func TestRotation(t *testing.T) {
	old, jwks := newPair(t, "2026-01")
	priv, pub, _ := Keygen("2026-02")
	jwks2, err := AddToKeySet(jwks, pub)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(jwks, nil)
	newer := &Signer{kid: "2026-02", key: priv.Key.(privKey), now: time.Now}
	tNew, _ := newer.Mint(Claims{Device: "d"}, time.Minute)
	tOld, _ := old.Mint(Claims{Device: "d"}, time.Minute)
	if _, err := v.Verify(tNew); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("new key before rotation: %v", err)
	}
	if err := v.SetKeys(jwks2); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{tOld, tNew} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("during rotation both keys verify: %v", err)
		}
	}
	if err := v.SetKeys([]byte(`{"keys":[]}`)); err == nil {
		t.Fatal("an empty key set was accepted")
	}
	if _, err := v.Verify(tNew); err != nil {
		t.Fatalf("a rejected key set replaced the good one: %v", err)
	}
}

func signRaw(t *testing.T, s *Signer, std jwt.Claims, cu custom) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: s.key, KeyID: s.kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(std).Claims(cu).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func FuzzVerify(f *testing.F) {
	s, jwks := newPair(f, "k1")
	good, _ := s.Mint(Claims{Device: "d1", Events: wire.Patterns{"a*"}}, time.Hour)
	f.Add(good)
	f.Add("a.b.c")
	f.Add("")
	v, _ := NewVerifier(jwks, nil)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if err == nil && (c.Device == "" || c.Expiry.IsZero()) {
			t.Fatalf("accepted a token without sub or exp: %+v", c)
		}
	})
}

func TestCacheHonoursExpiryAndRotation(t *testing.T) {
	s, jwks := newPair(t, "k1")
	now := time.Now()
	v, _ := NewVerifier(jwks, func() time.Time { return now })
	c := NewCache(v, 16)
	tok, _ := s.Mint(Claims{Device: "d"}, time.Minute)
	for i := 0; i < 2; i++ { // miss, then hit
		if _, err := c.Verify(tok); err != nil {
			t.Fatal(err)
		}
	}
	_, other := newPair(t, "k2")
	if err := v.SetKeys(other); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(tok); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a cached verdict outlived the removal of its key: %v", err)
	}
	_ = v.SetKeys(jwks)
	if _, err := c.Verify(tok); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := c.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("a cached token past exp: %v", err)
	}
}

// BenchmarkVerify: one signature check (what each WebSocket upgrade costs).
func BenchmarkVerify(b *testing.B) {
	s, jwks := newPair(b, "k1")
	v, _ := NewVerifier(jwks, nil)
	tok, _ := s.Mint(Claims{Device: "device-0001", Platform: "tv", Events: wire.Patterns{"fight-*"}}, time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCachedVerify: a token seen before (what each prefetch request costs).
func BenchmarkCachedVerify(b *testing.B) {
	s, jwks := newPair(b, "k1")
	v, _ := NewVerifier(jwks, nil)
	c := NewCache(v, 1024)
	tok, _ := s.Mint(Claims{Device: "device-0001"}, time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}
