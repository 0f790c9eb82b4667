package graph

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/prefetch"
)

// TestSentinelCollision: a payload that happens to contain the number standing
// in for ttlSeconds must come back intact, with a real TTL: the handler renders
// again with fresh placeholders instead of substituting into the payload.
func TestSentinelCollision(t *testing.T) {
	// The first render's ttlSeconds placeholder, for a handler seeded (1, 2).
	seed := rand.New(rand.NewPCG(1, 2))
	first := &render{rnd: rand.New(rand.NewPCG(seed.Uint64(), seed.Uint64()))}
	collide := strconv.Itoa(int(first.sentinel()))

	eng := memengine.New(memengine.Config{})
	if _, err := eng.PutStageMap(context.Background(), "ev", []byte(`{"stages":{"a":{"default":{"n":`+collide+`}}},"ttl_seconds":100}`), 1); err != nil {
		t.Fatal(err)
	}
	cache, err := prefetch.NewCache(prefetch.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	shed, _ := prefetch.NewShedder(prefetch.ShedConfig{}, nil)
	h, err := New(Config{}, cache, shed)
	if err != nil {
		t.Fatal(err)
	}
	h.rnd = rand.New(rand.NewPCG(1, 2))
	body := `{"query":"{ liveEvent(id:\"ev\") { ttlSeconds stages { key payload } } }"}`
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/graphql", strings.NewReader(body)))
	var out struct {
		Data struct {
			LiveEvent struct {
				TTLSeconds int `json:"ttlSeconds"`
				Stages     []struct {
					Payload json.RawMessage `json:"payload"`
				} `json:"stages"`
			} `json:"liveEvent"`
		} `json:"data"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	le := out.Data.LiveEvent
	if string(le.Stages[0].Payload) != `{"n":`+collide+`}` {
		t.Fatalf("payload rewritten: %s (placeholder %s)", le.Stages[0].Payload, collide)
	}
	if le.TTLSeconds < 50 || le.TTLSeconds > 150 {
		t.Fatalf("ttlSeconds %d", le.TTLSeconds)
	}
	if !strings.Contains(w.Body.String(), collide) {
		t.Fatal("setup: the colliding number is not in the response")
	}
}
