package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagecast/stagecast/broadcaster"
	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/graph"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
	"github.com/stagecast/stagecast/prefetch"
	"github.com/stagecast/stagecast/proxy"
)

// noteDev is a test device that records every note frame it got.
type noteDev struct {
	c        *device.Client
	connects atomic.Int64
	mu       sync.Mutex
	frames   []wire.ProxyFrame // every note frame, duplicates included
}

func (d *noteDev) notes() []wire.ProxyFrame {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]wire.ProxyFrame(nil), d.frames...)
}

// distinct returns the note cursors received, and fails the test when one cursor
// came with two different notes (a duplicate must carry the same cursor).
func (d *noteDev) distinct(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range d.notes() {
		if prev, ok := out[f.ID]; ok && prev != f.NID {
			t.Fatalf("cursor %s came with notes %s and %s", f.ID, prev, f.NID)
		}
		out[f.ID] = f.NID
	}
	return out
}

type noteRig struct {
	f      *fleet
	signer *devicetoken.Signer
	gql    string
	eng    *redisengine.Engine
}

func startNoteRig(t *testing.T, proxies int) *noteRig {
	signer, verifier, err := devicetoken.NewTestPair("e2e")
	if err != nil {
		t.Fatal(err)
	}
	r := redistest.Start(t, redistest.Options{})
	f := startFleetOn(t, proxies, []string{r.Addr()}, proxy.Config{Tokens: verifier})
	f.redis = r
	eng := newEngine(t, r.Addr())
	pf, err := graph.NewServer(graph.ServerConfig{Identity: prefetch.IdentityConfig{Tokens: verifier}}, eng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.proxies {
		eventually(t, 10*time.Second, "note subscriptions up", func() bool { return ready(t, p) })
	}
	return &noteRig{f: f, signer: signer, gql: "http://" + serveHTTP(t, pf.Handler()) + "/graphql", eng: eng}
}

func ready(t *testing.T, p *proxy.Server) bool {
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	return rec.Code == 200
}

func (r *noteRig) token(t *testing.T, dev, member string) string {
	tok, err := r.signer.Mint(devicetoken.Claims{Device: dev, Member: member}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startDev connects a device with notes on urls (in order).
func (r *noteRig) startDev(ctx context.Context, t *testing.T, urls []string, dev, member string, pull bool) *noteDev {
	d := &noteDev{}
	cfg := device.Config{URLs: urls, Token: r.token(t, dev, member), Notes: true, AckNotes: true,
		BackoffBase: 50 * time.Millisecond, BackoffCap: 500 * time.Millisecond,
		OnConnect: func() { d.connects.Add(1) },
		OnFrame: func(f wire.ProxyFrame) {
			if f.Op == wire.OpNote {
				d.mu.Lock()
				d.frames = append(d.frames, f)
				d.mu.Unlock()
			}
		}}
	if pull {
		cfg.InboxURL = r.gql
	}
	c, err := device.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.c = c
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = c.Run(ctx) }()
	t.Cleanup(wg.Wait)
	return d
}

func (r *noteRig) notify(ctx context.Context, t *testing.T, req producer.NotifyRequest) broadcaster.NotifyReply {
	t.Helper()
	rep, err := r.f.bc.Notify(ctx, req, "")
	if err != nil {
		t.Fatalf("notify: %v", err)
	}
	return rep
}

func registered(t *testing.T, p *proxy.Server, n float64) func() bool {
	return func() bool { return metricValue(t, p, "stagecast_proxy_inbox_registrations_total") >= n }
}

// Online devices of a member get a note pushed on whichever proxy holds them;
// an offline member's device pulls it through the prefetch API and gets it
// again, with the same cursor, when it connects and resumes; acks feed the report.
func TestNotificationsOnlineAndOffline(t *testing.T) {
	r := startNoteRig(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := r.startDev(ctx, t, r.f.urls, "dev-a", "m1", false)
	b := r.startDev(ctx, t, []string{r.f.urls[1], r.f.urls[0]}, "dev-b", "m1", false)
	eventually(t, 10*time.Second, "both proxies registered m1 and their device", func() bool {
		return registered(t, r.f.proxies[0], 2)() && registered(t, r.f.proxies[1], 2)()
	})
	rep := r.notify(ctx, t, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m1", "m2"}, Devices: []string{"dev-a"}},
		Type: "profile-updated", Priority: "high", Payload: json.RawMessage(`{"name":"Ana"}`)})
	if rep.Stored != 3 || rep.Pushes != 3 { // m1 on two proxies, dev-a on one; m2 nowhere
		t.Fatalf("reply %+v, want 3 stored, 3 pushes", rep)
	}
	eventually(t, 5*time.Second, "a got both copies, b the member's", func() bool {
		return len(a.distinct(t)) == 2 && len(b.distinct(t)) == 1
	})
	for _, f := range append(a.notes(), b.notes()...) {
		if f.NID != rep.ID || f.Type != "profile-updated" || f.Priority != "high" || string(f.Payload) != `{"name":"Ana"}` {
			t.Fatalf("note frame %+v", f)
		}
	}
	// m2 was offline: it pulls, then connects and resumes from the start.
	page, err := device.PullInbox(ctx, nil, r.gql, r.token(t, "dev-c", "m2"), "", 10)
	if err != nil || len(page.Notes) != 1 || page.Notes[0].NID != rep.ID || page.Next == "" {
		t.Fatalf("pull: %+v, %v", page, err)
	}
	c := r.startDev(ctx, t, r.f.urls, "dev-c", "m2", false)
	eventually(t, 5*time.Second, "the offline member's device got the note on resume", func() bool { return len(c.distinct(t)) == 1 })
	if got := c.notes()[0].ID; got != page.Notes[0].ID {
		t.Fatalf("pushed cursor %s, pulled %s: one note, one cursor", got, page.Notes[0].ID)
	}
	// Without a token a device holds no inbox (the proxy does not trust ids).
	raw, err := device.New(device.Config{URLs: r.f.urls[:1], Device: "dev-a", Notes: true,
		OnFrame: func(f wire.ProxyFrame) {
			if f.Op == wire.OpNote {
				t.Errorf("a device without a token got a note: %+v", f)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = raw.Run(ctx) }()
	// Every target acked (AckNotes): the report shows them read.
	eventually(t, 10*time.Second, "report: sent 4, acked 4, nothing pending", func() bool {
		nr, err := r.f.bc.NoteReport(ctx, rep.ID)
		return err == nil && nr.Sent >= 4 && nr.Acked >= 4 && nr.Pending == 0 && nr.Read == 3
	})
}

// A device keeps a stream of notes while its connection drops twice and its
// proxy is killed: at the end it holds every note of its inbox, and any
// duplicate carried the same cursor.
func TestNotificationsSurviveDropsAndProxyKill(t *testing.T) {
	r := startNoteRig(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := r.startDev(ctx, t, r.f.urls, "dev-k", "m-k", false) // starts on proxy 0
	eventually(t, 10*time.Second, "registered on proxy 0", registered(t, r.f.proxies[0], 2))
	const n = 150
	for i := 0; i < n; i++ {
		switch i {
		case 30, 100:
			eventually(t, 10*time.Second, "device connected", d.c.Connected)
			d.c.Drop()
		case 60:
			holder := -1
			eventually(t, 10*time.Second, "a proxy holds the device", func() bool {
				for i, p := range r.f.proxies {
					if p.Connections() == 1 {
						holder = i
						return true
					}
				}
				return false
			})
			// Killed, port and all: the device moves to the other proxy. (A
			// proxy that is only closed still answers 503 with a Retry-After
			// of 6-10 s, which the device rightly honours: that made this
			// test's 10 s wait below flaky.)
			r.f.kill(holder)
		}
		r.notify(ctx, t, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m-k"}}, Type: "t",
			Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
	}
	stored, err := r.eng.ReadInbox(ctx, engine.Inbox{Kind: wire.InboxMember, ID: "m-k"}, wire.Pos{}, 500)
	if err != nil || len(stored) != n {
		t.Fatalf("inbox holds %d notes (%v), want %d", len(stored), err, n)
	}
	eventually(t, 15*time.Second, "the device holds every note", func() bool { return len(d.distinct(t)) == n })
	got := d.distinct(t)
	for _, sn := range stored {
		if _, ok := got[wire.Cursor{Kind: wire.InboxMember, Pos: sn.Pos}.String()]; !ok {
			t.Fatalf("note at %v never reached the device", sn.Pos)
		}
	}
	if c := d.connects.Load(); c < 4 {
		t.Fatalf("%d connections, want 4 (two drops and a killed proxy)", c)
	}
	t.Logf("%d note frames for %d notes over %d connections", len(d.notes()), n, d.connects.Load())
}

// On a Redis Cluster with two replicas per master and WAIT 1 configured, a
// master is killed while notes flow: every note the broadcaster acknowledged
// (202) is in the inbox after the failover, once. (With one replica per
// master, the promoted one has none left: WAIT 1 then fails until a replica
// rejoins, and the producer gets 503s, never a false 202.)
func TestNotificationsClusterFailoverWait(t *testing.T) {
	cl := redistest.StartClusterTimeout(t, 3, 2, 2*time.Second)
	eng, err := redisengine.New(redisengine.Config{Addrs: cl.Addrs(), WaitReplicas: 1, WaitTimeout: 500 * time.Millisecond,
		OpTimeout: time.Second, ResubscribeMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	bs, err := broadcaster.New(broadcaster.Config{Token: token, EngineTimeout: 2 * time.Second, BreakerFailures: 1000,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, eng)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	bc := &producer.Client{BaseURL: "http://" + serveHTTP(t, bs.Handler()), Token: token}
	// A member whose inbox lives on the master about to die.
	victim := cl.Nodes[0]
	member := ""
	for i := 0; i < 10000 && member == ""; i++ {
		m := fmt.Sprintf("fm-%d", i)
		ib := engine.Inbox{Kind: wire.InboxMember, ID: m}
		if cl.MasterFor(fmt.Sprintf("sc:{n%d}:ib:%s", ib.Shard(), ib)) == victim {
			member = m
		}
	}
	if member == "" {
		t.Fatal("no member on the first master")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var acked []string
	for i := 0; i < 60; i++ {
		if i == 20 {
			victim.Kill()
		}
		key := fmt.Sprintf("wait-%d", i)
		deadline := time.Now().Add(20 * time.Second)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 6*time.Second)
			rep, err := bc.Notify(rctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{member}}, Type: "t",
				Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}, key)
			rcancel()
			if err == nil {
				acked = append(acked, rep.ID)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("note %d never acknowledged: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond) // the producer's retry pause (same key)
		}
	}
	stored, err := eng.ReadInbox(ctx, engine.Inbox{Kind: wire.InboxMember, ID: member}, wire.Pos{}, 500)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, sn := range stored {
		var b struct {
			NID string `json:"nid"`
		}
		_ = json.Unmarshal(sn.Body, &b)
		have[b.NID] = true
	}
	var lost []string
	for _, id := range acked {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged notes lost in the failover: %s", len(lost), len(acked), strings.Join(lost, " "))
	}
	if len(stored) != len(acked) {
		t.Fatalf("inbox holds %d notes for %d acknowledged (a retry stored twice?)", len(stored), len(acked))
	}
}

// regKey is the Redis key of an inbox's registry (see package redisengine).
func regKey(ib engine.Inbox) string {
	return fmt.Sprintf("sc:{n%d}:at:%s", ib.Shard(), ib)
}

// TestLostRegistrationSkipsNothing (hardening #2): a registration lost as a
// failover would lose it: a note to the member is stored but pushed nowhere.
// When the registration is back (the proxy's refresh), the next note names the
// one before it, the proxy sees its device never got that one and reads the
// backlog first: the device gets both, in order, and its inbox equals what it
// received. Then the same with the proxy's push subscriptions killed: the
// proxy writes its registrations again and re-reads the inbox on its own.
func TestLostRegistrationSkipsNothing(t *testing.T) {
	r := startNoteRig(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := r.startDev(ctx, t, r.f.urls, "dev-g", "m-g", false)
	eventually(t, 10*time.Second, "registered", registered(t, r.f.proxies[0], 2))
	ib := engine.Inbox{Kind: wire.InboxMember, ID: "m-g"}
	send := func(typ string) broadcaster.NotifyReply {
		return r.notify(ctx, t, producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{"m-g"}}, Type: typ, Payload: json.RawMessage(`{}`)})
	}
	first := send("first")
	eventually(t, 5*time.Second, "the first note", func() bool { return len(d.distinct(t)) == 1 })
	reg, err := r.f.redis.Cli(ctx, "HGET", regKey(ib), "proxy-0")
	if err != nil || strings.TrimSpace(reg) == "" {
		t.Fatalf("registration of %s: %q %v", ib, reg, err)
	}
	if out, err := r.f.redis.Cli(ctx, "DEL", regKey(ib)); err != nil {
		t.Fatalf("del: %v %s", err, out)
	}
	a := send("lost-a")
	if a.Pushes != 0 {
		t.Fatalf("A was pushed %d times with no registration", a.Pushes)
	}
	// The refresh, as the proxy's registrar writes it (a future expiry).
	if out, err := r.f.redis.Cli(ctx, "HSET", regKey(ib), "proxy-0", strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)); err != nil {
		t.Fatalf("hset: %v %s", err, out)
	}
	b := send("after-b")
	if b.Pushes != 1 {
		t.Fatalf("B pushed %d times", b.Pushes)
	}
	eventually(t, 5*time.Second, "A and B after the first", func() bool { return len(d.distinct(t)) == 3 })
	got := d.distinct(t)
	inbox, err := r.eng.ReadInbox(ctx, ib, wire.Pos{}, 100)
	if err != nil || len(inbox) != 3 {
		t.Fatalf("inbox: %d notes, %v", len(inbox), err)
	}
	for _, sn := range inbox {
		if _, ok := got[string(ib.Kind)+sn.Pos.String()]; !ok {
			t.Fatalf("the device never got the note at %v (got %v)", sn.Pos, got)
		}
	}
	if fs := d.notes(); fs[len(fs)-1].NID != b.ID || got[string(ib.Kind)+inbox[1].Pos.String()] != a.ID || got[string(ib.Kind)+inbox[0].Pos.String()] != first.ID {
		t.Fatalf("order: %v", fs)
	}
	if metricValue(t, r.f.proxies[0], "stagecast_proxy_note_gaps_total") < 1 {
		t.Fatal("no gap counted")
	}

	// A failover: registrations gone and the push subscriptions dropped.
	if out, err := r.f.redis.Cli(ctx, "DEL", regKey(ib)); err != nil {
		t.Fatalf("del: %v %s", err, out)
	}
	c := send("lost-c")
	if c.Pushes != 0 {
		t.Fatalf("C pushed %d times", c.Pushes)
	}
	resubs := metricValue(t, r.f.proxies[0], "stagecast_proxy_note_resyncs_total")
	if out, err := r.f.redis.Cli(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatalf("client kill: %v %s", err, out)
	}
	eventually(t, 10*time.Second, "C re-read after the resubscribe, with no new note", func() bool { return len(d.distinct(t)) == 4 })
	if metricValue(t, r.f.proxies[0], "stagecast_proxy_note_resyncs_total") <= resubs {
		t.Fatal("no resubscribe counted")
	}
	eventually(t, 5*time.Second, "registration written again", func() bool {
		reg, err := r.f.redis.Cli(ctx, "HGET", regKey(ib), "proxy-0")
		return err == nil && strings.TrimSpace(reg) != ""
	})
	if e := send("pushed-e"); e.Pushes != 1 {
		t.Fatalf("after the restore E was pushed %d times", e.Pushes)
	}
	eventually(t, 5*time.Second, "E", func() bool { return len(d.distinct(t)) == 5 })
	for _, f := range d.notes() {
		if f.Op == wire.OpError {
			t.Fatalf("an unsolicited error frame: %+v", f)
		}
	}
}

// TestNotesReachDevicesAcrossMasterKill (hardening #2): on a Redis Cluster, the
// master holding 16 members' inboxes is killed while notes flow to them and
// half their devices are still connecting. Registrations and pushes are lost
// in the failover; still, after it every note each inbox holds reaches that
// member's device (a proxy re-registers and re-reads on resubscribe, and a push
// naming an unseen entry reads the backlog first).
func TestNotesReachDevicesAcrossMasterKill(t *testing.T) {
	cl := redistest.StartClusterTimeout(t, 3, 1, 2*time.Second)
	signer, verifier, err := devicetoken.NewTestPair("e2e")
	if err != nil {
		t.Fatal(err)
	}
	f := startFleetOn(t, 2, cl.Addrs(), proxy.Config{Tokens: verifier})
	for _, p := range f.proxies {
		eventually(t, 10*time.Second, "note subscriptions up", func() bool { return ready(t, p) })
	}
	r := &noteRig{f: f, signer: signer, eng: newEngine(t, cl.Addrs()...)}
	victim := cl.Nodes[0]
	var members []string
	for i := 0; i < 100000 && len(members) < 16; i++ {
		m := fmt.Sprintf("mk-%d", i)
		ib := engine.Inbox{Kind: wire.InboxMember, ID: m}
		if cl.MasterFor(fmt.Sprintf("sc:{n%d}:ib:%s", ib.Shard(), ib)) == victim {
			members = append(members, m)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devs := map[string]*noteDev{}
	connect := func(ms []string) {
		for i, m := range ms {
			devs[m] = r.startDev(ctx, t, []string{f.urls[i%2], f.urls[(i+1)%2]}, "dev-"+m, m, false)
		}
	}
	connect(members[:8])
	for i := 0; i < 30; i++ {
		switch i {
		case 8:
			victim.Kill()
		case 10:
			connect(members[8:]) // devices connecting during the failover
		}
		key := fmt.Sprintf("mk-note-%d", i)
		deadline := time.Now().Add(20 * time.Second)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 6*time.Second)
			_, err := f.bc.Notify(rctx, producer.NotifyRequest{To: producer.NotifyTargets{Members: members}, Type: "t",
				Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}, key)
			rcancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("note %d never acknowledged: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond) // the producer's retry pause (same key)
		}
	}
	missing := func() (int, string) {
		n, example := 0, ""
		for _, m := range members {
			ib := engine.Inbox{Kind: wire.InboxMember, ID: m}
			stored, err := r.eng.ReadInbox(ctx, ib, wire.Pos{}, 500)
			if err != nil {
				return -1, err.Error()
			}
			got := devs[m].distinct(t)
			for _, sn := range stored {
				if _, ok := got[string(ib.Kind)+sn.Pos.String()]; !ok {
					n++
					example = fmt.Sprintf("%s at %v", m, sn.Pos)
				}
			}
		}
		return n, example
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, ex := missing()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stored notes never reached their device (e.g. %s)", n, ex)
		}
		time.Sleep(200 * time.Millisecond) // polling Redis and the devices
	}
}
