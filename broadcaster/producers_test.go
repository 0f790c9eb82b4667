package broadcaster

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagecast/stagecast/internal/engine/memengine"
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

// Every change is an audit line naming the producer, never its token.
func TestAuditLines(t *testing.T) {
	var buf bytes.Buffer
	tok := "3f9a1c7e5b2d4f60a8e1c3b5d7f9a2c4"
	s, err := New(Config{Producers: []Producer{{Name: "alice", Token: tok}},
		Logger: slog.New(slog.NewJSONHandler(&buf, nil))}, memengine.New(memengine.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1/events/ev/stage", `{"stage":"round-1"}`},
		{http.MethodPut, "/v1/events/ev/stages", `{"stages":{"a":{"default":{}}}}`},
		{http.MethodPut, "/v1/events/ev/window", `{"live":true}`},
	} {
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Fatalf("%s %s: %d %s", c.method, c.path, w.Code, w.Body)
		}
	}
	if strings.Contains(buf.String(), tok) {
		t.Fatal("a log line holds the producer token")
	}
	for _, action := range []string{"set_stage", "put_stage_map", "set_window"} {
		found := false
		for _, line := range strings.Split(buf.String(), "\n") {
			found = found || (strings.Contains(line, `"msg":"audit"`) && strings.Contains(line, `"producer":"alice","action":"`+action+`"`))
		}
		if !found {
			t.Errorf("no audit line for %s in\n%s", action, buf.String())
		}
	}
}
