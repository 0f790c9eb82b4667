package graph_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/prefetch"
)

func benchServer(b *testing.B) http.Handler {
	eng := memengine.New(memengine.Config{})
	var sb strings.Builder
	sb.WriteString(`{"stages":{`)
	for i := 0; i < 12; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`"stage-` + strconv.Itoa(i) + `":{"default":{"rows":"` + strings.Repeat("d", 300) + `"}}`)
	}
	sb.WriteString(`}}`)
	if _, err := eng.PutStageMap(b.Context(), "ev", []byte(sb.String()), 1); err != nil {
		b.Fatal(err)
	}
	s, err := graph.NewServer(graph.ServerConfig{Cache: prefetch.Config{Logger: quiet(), FreshFor: 1 << 40}}, eng)
	if err != nil {
		b.Fatal(err)
	}
	return s.Handler()
}

func benchQuery(b *testing.B, h http.Handler, vars func(i int) map[string]any) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		body, _ := json.Marshal(map[string]any{"query": prefetchQuery, "variables": vars(i)})
		i++
		req := httptest.NewRequest(http.MethodPost, "/graphql", strings.NewReader(string(body)))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// BenchmarkPrefetchQueryCached: the same query again: served from the query
// cache (no parse, validation or execution).
func BenchmarkPrefetchQueryCached(b *testing.B) {
	h := benchServer(b)
	benchQuery(b, h, func(int) map[string]any { return map[string]any{"event": "ev"} })
}

// BenchmarkPrefetchQueryUncached: a new variables object every time, so every
// request is parsed, validated and executed by graphql-go.
func BenchmarkPrefetchQueryUncached(b *testing.B) {
	h := benchServer(b)
	benchQuery(b, h, func(i int) map[string]any { return map[string]any{"event": "ev", "segment": "s" + strconv.Itoa(i)} })
}
