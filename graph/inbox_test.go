package graph_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/memengine"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
)

// The inbox query: one device's member and device inboxes merged oldest first,
// paged by cursor; needs a device token; never cached, so two devices sending
// the same query text each get their own notes.
func TestInboxQuery(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	signer, ver, err := devicetoken.NewTestPair("k")
	if err != nil {
		t.Fatal(err)
	}
	_, url := startServer(t, eng, graph.ServerConfig{Identity: prefetch.IdentityConfig{Tokens: ver}})
	ctx := context.Background()
	send := func(id string, members, devices []string) {
		if _, err := eng.Notify(ctx, engine.NoteWrite{ID: id, TS: 1, Note: wire.Notification{Members: members, Devices: devices,
			Type: "t", Priority: wire.PriorityHigh, Payload: json.RawMessage(`{"id":"` + id + `"}`), TTL: time.Hour}}); err != nil {
			t.Fatal(err)
		}
	}
	send("n1", []string{"m1"}, nil)
	send("n2", nil, []string{"d1"})
	send("n3", []string{"m1", "m2"}, nil)
	send("n4", nil, []string{"d2"})
	tok1, _ := signer.Mint(devicetoken.Claims{Device: "d1", Member: "m1"}, time.Hour)
	tok2, _ := signer.Mint(devicetoken.Claims{Device: "d2", Member: "m2"}, time.Hour)

	page, err := device.PullInbox(ctx, nil, url+"/graphql", tok1, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Notes) != 2 || page.Notes[0].NID != "n1" || page.Notes[1].NID != "n2" ||
		!strings.HasPrefix(page.Notes[0].ID, "m") || !strings.HasPrefix(page.Notes[1].ID, "d") || string(page.Notes[1].Payload) != `{"id":"n2"}` {
		t.Fatalf("first page %+v", page)
	}
	rest, err := device.PullInbox(ctx, nil, url+"/graphql", tok1, page.Next, 10)
	if err != nil || len(rest.Notes) != 1 || rest.Notes[0].NID != "n3" {
		t.Fatalf("second page %+v, %v", rest, err)
	}
	other, err := device.PullInbox(ctx, nil, url+"/graphql", tok2, "", 10)
	if err != nil || len(other.Notes) != 2 || other.Notes[0].NID != "n3" || other.Notes[1].NID != "n4" {
		t.Fatalf("device 2 (same query text): %+v, %v", other, err)
	}
	// Headers: private, never stored by a shared cache.
	body := `{"query":"{ inbox { notes { id } next } }"}`
	req, _ := http.NewRequest(http.MethodPost, url+"/graphql", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok1)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if cc := resp.Header.Get("Cache-Control"); cc != "private, no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}
	// No token: no inbox.
	_, out, raw := post(t, url, `{ inbox { next } }`, nil)
	if len(out.Errors) != 1 || out.Errors[0].Extensions["code"] != "UNAUTHENTICATED" {
		t.Fatalf("without a token: %s", raw)
	}
	for _, tc := range []struct{ q, code string }{
		{`{ inbox(after: "garbage") { next } }`, "BAD_REQUEST"},
		{`{ inbox(limit: 1000) { next } }`, "BAD_REQUEST"},
		{`{ a: inbox { next } b: inbox { next } }`, "COST_LIMIT"},
	} {
		b, _ := json.Marshal(map[string]any{"query": tc.q})
		req, _ := http.NewRequest(http.MethodPost, url+"/graphql", strings.NewReader(string(b)))
		req.Header.Set("Authorization", "Bearer "+tok1)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(raw), `"code":"`+tc.code+`"`) {
			t.Errorf("%s: %s, want %s", tc.q, raw, tc.code)
		}
	}
}

// A prefetch server publishes its shedding level through the engine, where
// proxies read it to pace paced broadcasts.
func TestPublishLoad(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	s, _ := startServer(t, eng, graph.ServerConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.PublishLoad(ctx, eng, "pf-test", 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		loads, _ := eng.ProxyLoads(ctx, time.Now().UnixMilli())
		if len(loads) == 1 && loads[0].ID == "pf-test" && loads[0].Tier == "prefetch" && loads[0].Shedding == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("loads %+v", loads)
		}
		time.Sleep(10 * time.Millisecond) // polling the engine
	}
}

// TestInboxPullRate (hardening #4): pulls are limited per device token: the
// burst goes through, the next is RATE_LIMITED, another device is unaffected,
// and the budget refills with time.
func TestInboxPullRate(t *testing.T) {
	eng := memengine.New(memengine.Config{})
	signer, ver, err := devicetoken.NewTestPair("k")
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Int64 // Unix ns: the server's goroutines read it
	now.Store(time.Unix(1000, 0).UnixNano())
	reader := &prefetch.InboxReader{Store: eng, Now: func() time.Time { return time.Unix(0, now.Load()) }}
	_, url := startServer(t, eng, graph.ServerConfig{Identity: prefetch.IdentityConfig{Tokens: ver}, GraphQL: graph.Config{Inbox: reader}})
	ctx := context.Background()
	tok1, _ := signer.Mint(devicetoken.Claims{Device: "d1", Member: "m1"}, time.Hour)
	tok2, _ := signer.Mint(devicetoken.Claims{Device: "d2", Member: "m2"}, time.Hour)
	for i := range prefetch.DefaultPullBurst {
		if _, err := device.PullInbox(ctx, nil, url+"/graphql", tok1, "", 10); err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
	}
	if _, err := device.PullInbox(ctx, nil, url+"/graphql", tok1, "", 10); err == nil || !strings.Contains(err.Error(), "RATE_LIMITED") {
		t.Fatalf("pull past the burst: %v, want RATE_LIMITED", err)
	}
	if _, err := device.PullInbox(ctx, nil, url+"/graphql", tok2, "", 10); err != nil {
		t.Fatalf("another device: %v", err)
	}
	now.Add(int64(float64(time.Second) / prefetch.DefaultPullRate))
	if _, err := device.PullInbox(ctx, nil, url+"/graphql", tok1, "", 10); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
}
