package stagecast_test

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/waitfor"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
	"github.com/stagecast/stagecast/sdk/go/stagecast"
)

// TestAPINamesNoInternalType: every exported declaration of the package
// (functions, methods, types and their fields) names only its own types and
// the standard library's, so any module can use it.
func TestAPINamesNoInternalType(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "stagecast.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	internal := map[string]bool{}
	for _, imp := range f.Imports {
		if strings.Contains(imp.Path.Value, "/internal/") {
			name := strings.Trim(imp.Path.Value[strings.LastIndex(imp.Path.Value, "/")+1:], `"`)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			internal[name] = true
		}
	}
	check := func(where string, n ast.Node) {
		ast.Inspect(n, func(n ast.Node) bool {
			if se, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := se.X.(*ast.Ident); ok && internal[id.Name] {
					t.Errorf("%s names %s.%s", where, id.Name, se.Sel.Name)
				}
			}
			return true
		})
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Name.IsExported() {
				check(d.Name.Name, d.Type)
			}
		case *ast.GenDecl:
			for _, s := range d.Specs {
				if ts, ok := s.(*ast.TypeSpec); ok && ts.Name.IsExported() {
					if st, ok := ts.Type.(*ast.StructType); ok {
						for _, fl := range st.Fields.List {
							if len(fl.Names) == 0 || fl.Names[0].IsExported() {
								check(ts.Name.Name, fl.Type)
							}
						}
					} else {
						check(ts.Name.Name, ts.Type)
					}
				}
			}
		}
	}
}

// TestFollowsAnEvent: against real servers (in-memory engine): the device
// prefetches the map, gets each stage change with its payload from the map
// it holds, and gets a notification for its token's member.
func TestFollowsAnEvent(t *testing.T) {
	signer, verifier, err := devicetoken.NewTestPair("sdk-go")
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng := memengine.New(memengine.Config{})
	p, err := proxy.New(proxy.Config{Tokens: verifier, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(p.Handler())
	t.Cleanup(func() { p.Close(); ps.Close() })
	const token = "sdk-go-producer-token-0123456789"
	bs, err := broadcaster.New(broadcaster.Config{Token: token, Logger: quiet}, eng)
	if err != nil {
		t.Fatal(err)
	}
	bhs := httptest.NewServer(bs.Handler())
	t.Cleanup(func() { bs.Close(); bhs.Close() })
	pf, err := graph.NewServer(graph.ServerConfig{Identity: prefetch.IdentityConfig{Tokens: verifier}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	fhs := httptest.NewServer(pf.Handler())
	t.Cleanup(fhs.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bc := &producer.Client{BaseURL: bhs.URL, Token: token}
	if _, err := bc.PutStageMap(ctx, "ev", []byte(`{"stages":{"pre":{"default":{"rows":["p"]}},"round-3":{"default":{"rows":["r3"]}}}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.SetStage(ctx, "ev", "pre", nil, ""); err != nil {
		t.Fatal(err)
	}
	devTok, err := signer.Mint(devicetoken.Claims{Device: "tv-1", Member: "m1", Platform: "tv"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var stages []stagecast.Stage
	var notes []stagecast.Note
	c, err := stagecast.New(stagecast.Config{Proxies: []string{"ws" + strings.TrimPrefix(ps.URL, "http") + "/v1/ws"}, GraphQL: fhs.URL + "/graphql",
		Events: []string{"ev"}, Token: devTok, Notes: true,
		OnStage: func(s stagecast.Stage) { mu.Lock(); stages = append(stages, s); mu.Unlock() },
		OnNote:  func(n stagecast.Note) { mu.Lock(); notes = append(notes, n); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitfor.True(t, 10*time.Second, "the first stage, caught up at connect, and the map prefetched", func() bool {
		st, ok := c.Stage("ev")
		return ok && st.Key == "pre" && st.Held && c.Connected()
	})
	r3, err := bc.SetStage(ctx, "ev", "round-3", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "round-3 with the payload held (no request at the peak)", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := len(stages)
		return n > 0 && stages[n-1].V == r3.V && stages[n-1].Held && string(stages[n-1].Payload) == `{"rows":["r3"]}`
	})
	nr, err := bc.Notify(ctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1"}}, Type: "goal", Priority: "high",
		Payload: json.RawMessage(`{"team":"home"}`)}, "")
	if err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "the note, once", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(notes) == 1 && notes[0].ID == nr.ID && notes[0].Type == "goal" && string(notes[0].Payload) == `{"team":"home"}` && notes[0].Cursor != ""
	})
	waitfor.True(t, 10*time.Second, "the note acked", func() bool {
		rep, err := bc.NoteReport(ctx, nr.ID)
		return err == nil && rep.Acked == 1
	})
	cancel()
	if err := <-done; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	if _, err := stagecast.New(stagecast.Config{Proxies: []string{"ws://x/v1/ws"}, GraphQL: "http://x/graphql"}); err == nil {
		t.Fatal("a config without events was accepted")
	}
}
