package broadcaster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckTokenStrength(t *testing.T) {
	for _, bad := range []string{
		"short",
		"replace-me-with-a-long-random-token", // the old deploy placeholder
		"changeme-changeme-changeme",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"abababababababababababababababab",
		"0123456701234567", // 8 distinct, 48 bits
	} {
		if err := CheckTokenStrength(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, good := range []string{
		"3f9a1c7e5b2d4f60a8e1c3b5d7f9a2c4",     // openssl rand -hex 16
		"k7Qz1pX9vB3mN8rT2wY6uE4iO0aS5dF=",     // base64
		"dev-0f1e2d3c4b5a69788796a5b4c3d2e1f0", // the dev server's own
	} {
		if err := CheckTokenStrength(good); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
}

func TestProducerSetValidation(t *testing.T) {
	ok := Producer{Name: "a", Token: "3f9a1c7e5b2d4f60a8e1c3b5d7f9a2c4"}
	for name, ps := range map[string][]Producer{
		"none":           nil,
		"duplicate name": {ok, {Name: "a", Token: "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"}},
		"shared token":   {ok, {Name: "b", Token: ok.Token}},
		"bad pattern":    {{Name: "c", Token: ok.Token, Events: []string{"Fight *"}}},
		"empty name":     {{Token: ok.Token}},
	} {
		if _, err := newProducerSet(ps); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	path := filepath.Join(t.TempDir(), "p.json")
	_ = os.WriteFile(path, []byte(`{"producers":[{"name":"fights","token":"3f9a1c7e5b2d4f60a8e1c3b5d7f9a2c4","events":["fight-*"]}]}`), 0o600)
	ps, err := LoadProducers(path)
	if err != nil || len(ps) != 1 || ps[0].Events[0] != "fight-*" {
		t.Fatalf("LoadProducers: %+v %v", ps, err)
	}
	_ = os.WriteFile(path, []byte(`{"producers":[],"extra":1}`), 0o600)
	if _, err := LoadProducers(path); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("unknown field accepted: %v", err)
	}
}
