package redisengine

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/rueidis"

	"github.com/stagecast/stagecast/internal/redistest"
)

// Each script of scripts/*.lua, called directly (keys and arguments as its
// comment block states them) on a real redis-server: the edge cases the
// engine's conformance suite reaches only through the engine's API. One
// server for the file; each test uses keys of its own.

func scriptClient(t *testing.T) rueidis.Client {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func exists(t *testing.T, c rueidis.Client, keys ...string) int64 {
	t.Helper()
	n, err := c.Do(context.Background(), c.B().Exists().Key(keys...).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// concurrently runs f(i) for i in [0, n) on n goroutines and waits.
func concurrently(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); f(i) }()
	}
	wg.Wait()
}

func TestScriptsHaveTheirHeader(t *testing.T) {
	entries, err := scriptFiles.ReadDir("scripts")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src, _ := scriptFiles.ReadFile("scripts/" + e.Name())
		head := string(src[:min(len(src), 2000)])
		if !strings.HasPrefix(head, "-- "+e.Name()+": ") {
			t.Errorf("%s does not open with its name and what it does", e.Name())
		}
		if e.Name() != "pos.lua" && (!strings.Contains(head, "KEYS[1]") || !strings.Contains(head, "ARGV[1]")) {
			t.Errorf("%s: its comment block states no KEYS or ARGV", e.Name())
		}
	}
	if len(entries) != 10 {
		t.Errorf("%d script files, want 10 (a new one needs its test here)", len(entries))
	}
}

func TestSetStageScript(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	keys := []string{key("ss", "stage"), key("ss", "idem"), key("ss", "chan"), key("ss", "dig")}
	set := func(floor, idem, reqKey string) []rueidis.RedisMessage {
		t.Helper()
		use := "0"
		if idem != "" {
			use = "1"
		}
		k := append([]string{}, keys...)
		if idem != "" {
			k[1] = key("ss", "idem:"+idem)
		}
		res, err := setLua.Exec(ctx, c, k, []string{`{"stage":"` + reqKey + `"`, "5", floor, "60", "60000", use, reqKey}).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// missing keys: the log is created, the version is at least the floor and Redis's clock
	res := set("8999999999999999", "", "a")
	msg, _ := res[1].ToString()
	if !strings.HasSuffix(msg, `"v":8999999999999999}`) || strings.Contains(msg, "e+") {
		t.Fatalf("first message %s", msg)
	}
	// a digest is copied in
	if err := c.Do(ctx, c.B().Hset().Key(keys[3]).FieldValue().FieldValue("b", "dg1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	res = set("0", "", "b")
	msg, _ = res[1].ToString()
	if !strings.Contains(msg, `"d":"dg1","v":9000000000000000}`) {
		t.Fatalf("second message %s: want the digest and v = last + 1", msg)
	}
	// an idempotency key replays the first reply
	first := set("0", "k1", "c")
	again := set("0", "k1", "c")
	if n, _ := again[0].AsInt64(); n != 1 {
		t.Fatalf("replay flag %v", again[0])
	}
	a, _ := again[1].ToString()
	f, _ := first[1].ToString()
	if a != "c\n"+f {
		t.Fatalf("replay %q, want the stage key and the first message %q", a, f)
	}
	// concurrent callers: distinct, increasing versions; the log keeps logLen (5)
	vs := make([]string, 40)
	concurrently(40, func(i int) {
		r, err := setLua.Exec(ctx, c, keys, []string{`{"stage":"x"`, "5", "0", "60", "60000", "0", "x"}).ToArray()
		if err == nil {
			vs[i], _ = r[1].ToString()
		}
	})
	seen := map[string]bool{}
	for _, m := range vs {
		v := m[strings.LastIndex(m, `"v":`)+4 : len(m)-1]
		if v == "" || seen[v] {
			t.Fatalf("version %q twice or missing in %v", v, vs)
		}
		seen[v] = true
	}
	if n, _ := c.Do(ctx, c.B().Xlen().Key(keys[0]).Build()).AsInt64(); n != 5 {
		t.Fatalf("log holds %d entries, want logLen 5", n)
	}
}

func TestPutMapScript(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	keys := []string{key("pm", "map"), key("pm", "mapv"), key("pm", "dig")}
	put := func(raw string, digests ...string) int64 {
		t.Helper()
		v, err := putMapLua.Exec(ctx, c, keys, append([]string{raw, "1000", "60000"}, digests...)).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := put(`{"a":1}`, "a", "d1", "b", "d2"); v != 1 {
		t.Fatalf("first version %d", v)
	}
	// a replace drops the digests of stages that are gone
	put(`{"a":2}`, "a", "d3")
	dig, err := c.Do(ctx, c.B().Hgetall().Key(keys[2]).Build()).AsStrMap()
	if err != nil || len(dig) != 1 || dig["a"] != "d3" {
		t.Fatalf("digests %v %v", dig, err)
	}
	// concurrent writers: distinct versions, and the map is one of theirs whole
	vs := make([]int64, 20)
	concurrently(20, func(i int) {
		vs[i], _ = putMapLua.Exec(ctx, c, keys, []string{fmt.Sprintf(`{"w":%d}`, i), "1000", "60000", "w", strconv.Itoa(i)}).AsInt64()
	})
	seen := map[int64]bool{}
	for _, v := range vs {
		if v < 3 || seen[v] {
			t.Fatalf("versions %v", vs)
		}
		seen[v] = true
	}
	m, _ := c.Do(ctx, c.B().Get().Key(keys[0]).Build()).ToString()
	parts := strings.SplitN(m, "\n", 3)
	d, _ := c.Do(ctx, c.B().Hget().Key(keys[2]).Field("w").Build()).ToString()
	if len(parts) != 3 || parts[0] != "22" || parts[2] != `{"w":`+d+`}` {
		t.Fatalf("map %q with digest %q: the last writer's map and digest, version 22", m, d)
	}
}

func TestNotifyScript(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	ib, ix, at := "sc:{n0}:ib:m:x", "sc:{n0}:ix:m:x", "sc:{n0}:at"
	notify := func(nid, dedup string, maxLen int) []rueidis.RedisMessage {
		t.Helper()
		res, err := notifyLua.Exec(ctx, c, []string{ib, ix, at}, []string{`{"nid":"` + nid + `"}`, "60000", dedup, nid, strconv.Itoa(maxLen), "3600000", "h", "sc:{n0}:px:", "4"}).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// missing keys: a new inbox, nobody registered to push to
	r := notify("n1", "", 3)
	p1, _ := r[0].ToString()
	if pushes, _ := r[1].AsInt64(); p1 == "" || pushes != 0 {
		t.Fatalf("first note %v", r)
	}
	// a registered proxy is pushed to, with prev
	if _, err := registerLua.Exec(ctx, c, []string{at}, []string{"proxy-1", "60000"}).AsInt64(); err != nil {
		t.Fatal(err)
	}
	r = notify("n2", "", 3)
	if pushes, _ := r[1].AsInt64(); pushes != 1 {
		t.Fatalf("pushes %v", r)
	}
	if prev, _ := r[2].ToString(); prev != p1 {
		t.Fatalf("prev %q, want %q", prev, p1)
	}
	// a retry of a stored note: the same position, stored once
	p2, _ := r[0].ToString()
	if again, _ := notify("n2", "", 3)[0].ToString(); again != p2 {
		t.Fatalf("retry at %s, stored at %s", again, p2)
	}
	// a dedup key replaces its earlier note; the replaced id never comes back
	notify("d1", "score", 3)
	notify("d2", "score", 3)
	if gone := notify("d1", "score", 3); len(gone) != 3 {
		t.Fatal(gone)
	} else if p, _ := gone[0].ToString(); p != "" {
		t.Fatalf("a replaced note came back at %s", p)
	}
	// the count bound (3), with an exact index, under concurrent callers
	concurrently(30, func(i int) {
		_, _ = notifyLua.Exec(ctx, c, []string{ib, ix, at}, []string{"{}", "60000", "", fmt.Sprintf("c%d", i), "3", "3600000", "h", "sc:{n0}:px:", "4"}).ToArray()
	})
	n, _ := c.Do(ctx, c.B().Xlen().Key(ib).Build()).AsInt64()
	fields, _ := c.Do(ctx, c.B().Hlen().Key(ix).Build()).AsInt64()
	if n != 3 || fields > 2*3+2 {
		t.Fatalf("inbox holds %d notes (want 3) and %d index fields (at most 8)", n, fields)
	}
	// an expired registration is dropped, not pushed to
	if err := c.Do(ctx, c.B().Hset().Key(at).FieldValue().FieldValue("proxy-1", "1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if pushes, _ := notify("n9", "", 3)[1].AsInt64(); pushes != 0 || exists(t, c, at) != 0 {
		t.Fatalf("pushed %d to an expired registration", pushes)
	}
}

func TestRegisterMarkReadCountScripts(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	// register: missing key created, with a ttl
	if _, err := registerLua.Exec(ctx, c, []string{"sc:{n1}:at"}, []string{"p", "5000"}).AsInt64(); err != nil {
		t.Fatal(err)
	}
	if ttl, _ := c.Do(ctx, c.B().Pttl().Key("sc:{n1}:at").Build()).AsInt64(); ttl <= 0 || ttl > 5000 {
		t.Fatalf("registry ttl %d", ttl)
	}
	// mark_read: a missing inbox stays missing
	if n, _ := markReadLua.Exec(ctx, c, []string{"sc:{n1}:ix:m:gone"}, []string{"5-0"}).AsInt64(); n != 0 || exists(t, c, "sc:{n1}:ix:m:gone") != 0 {
		t.Fatal("mark_read created an inbox index")
	}
	// the mark only moves forward, whatever the order of concurrent callers
	ix := "sc:{n1}:ix:m:y"
	if err := c.Do(ctx, c.B().Hset().Key(ix).FieldValue().FieldValue("i:n", "1-0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	concurrently(20, func(i int) {
		_, _ = markReadLua.Exec(ctx, c, []string{ix}, []string{fmt.Sprintf("%d-%d", 100+i%5, i)}).AsInt64()
	})
	if r, _ := c.Do(ctx, c.B().Hget().Key(ix).Field("read").Build()).ToString(); r != "104-19" {
		t.Fatalf("read mark %s, want the highest, 104-19", r)
	}
	// count: a missing record is not created; concurrent adds add up
	if n, _ := countLua.Exec(ctx, c, []string{recKey("none")}, []string{"1", "1"}).AsInt64(); n != 0 || exists(t, c, recKey("none")) != 0 {
		t.Fatal("count created a report")
	}
	if err := c.Do(ctx, c.B().Hset().Key(recKey("r")).FieldValue().FieldValue("meta", "{}").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	concurrently(25, func(int) { _, _ = countLua.Exec(ctx, c, []string{recKey("r")}, []string{"2", "1"}).AsInt64() })
	rec, _ := c.Do(ctx, c.B().Hgetall().Key(recKey("r")).Build()).AsStrMap()
	if rec["sent"] != "50" || rec["acked"] != "25" {
		t.Fatalf("record %v, want sent 50, acked 25", rec)
	}
}

func TestScheduleScripts(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	log, sched, ch, dig := key("sc", "stage"), key("sc", "sched"), key("sc", "chan"), key("sc", "dig")
	arm := func(id, stage string, atMS int64, maxSchedules int) (string, error) {
		return armLua.Exec(ctx, c, []string{log, sched, ch, dig}, []string{id, stage, strconv.FormatInt(atMS, 10),
			`{"stage":"` + stage + `","arm":{"id":"` + id + `","at":` + strconv.FormatInt(atMS, 10) + `}`, "60000", strconv.Itoa(maxSchedules)}).ToString()
	}
	// concurrent arms at one time: distinct versions
	msgs := make([]string, 8)
	concurrently(8, func(i int) { msgs[i], _ = arm(fmt.Sprintf("s%d", i), "round", 5000, 100) })
	seen := map[string]bool{}
	for _, m := range msgs {
		v := m[strings.LastIndex(m, `"v":`)+4 : len(m)-1]
		if seen[v] || !strings.HasPrefix(v, "5000") {
			t.Fatalf("armed %v: versions must differ, from at in us", msgs)
		}
		seen[v] = true
	}
	// the same id and body: the same message; another body: a conflict
	if again, err := arm("s0", "round", 5000, 100); err != nil || again != msgs[0] {
		t.Fatalf("re-arm %q %v", again, err)
	}
	if _, err := arm("s0", "knockout", 5000, 100); err == nil || !strings.Contains(err.Error(), "SCHEDULE_CONFLICT") {
		t.Fatalf("conflict: %v", err)
	}
	if _, err := arm("s9", "round", 6000, 8); err == nil || !strings.Contains(err.Error(), "SCHEDULE_LIMIT") {
		t.Fatalf("limit: %v", err)
	}
	// cancel: missing 0, another version -1, then 1
	cancel := func(id, v string) int64 {
		n, err := cancelLua.Exec(ctx, c, []string{sched, ch}, []string{id, v}).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if cancel("nope", "") != 0 || cancel("s1", "1") != -1 || cancel("s1", "") != 1 || cancel("s1", "") != 0 {
		t.Fatal("cancel replies")
	}
	// fire the last armed: the earlier ones (lower versions, same time) fire first, in order
	var lastID string
	var lastV int64
	for i, m := range msgs {
		if i == 1 {
			continue // cancelled
		}
		v, _ := strconv.ParseInt(m[strings.LastIndex(m, `"v":`)+4:len(m)-1], 10, 64)
		if v > lastV {
			lastV, lastID = v, fmt.Sprintf("s%d", i)
		}
	}
	res, err := fireLua.Exec(ctx, c, []string{log, sched, ch}, []string{lastID, "100", "60000"}).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	code, _ := res[0].AsInt64()
	st, _ := res[1].ToString()
	n, _ := res[2].AsInt64()
	if code != 1 || n != 6 || strings.Contains(st, `"arm"`) {
		t.Fatalf("fire: %d %q %d, want fired with the 6 earlier first, no arm field", code, st, n)
	}
	if l, _ := c.Do(ctx, c.B().Xlen().Key(log).Build()).AsInt64(); l != 7 {
		t.Fatalf("log holds %d, want 7", l)
	}
	// fired already (another broadcaster): not found; a schedule behind the log: superseded
	if res, _ := fireLua.Exec(ctx, c, []string{log, sched, ch}, []string{lastID, "100", "60000"}).ToArray(); len(res) != 3 {
		t.Fatal(res)
	} else if code, _ := res[0].AsInt64(); code != 0 {
		t.Fatalf("refire code %d", code)
	}
	if _, err := c.Do(ctx, c.B().Hset().Key(sched).FieldValue().FieldValue("old", `{"stage":"x","arm":{"id":"old","at":1},"v":1}`).Build()).AsInt64(); err != nil {
		t.Fatal(err)
	}
	if res, _ := fireLua.Exec(ctx, c, []string{log, sched, ch}, []string{"old", "100", "60000"}).ToArray(); len(res) != 3 {
		t.Fatal(res)
	} else if code, _ := res[0].AsInt64(); code != 2 {
		t.Fatalf("a schedule behind the log: code %d, want 2 (superseded)", code)
	}
}

// commandCalls is INFO commandstats' call count of one command ("evalsha",
// "script|load"), 0 when it was never called.
func commandCalls(t *testing.T, c rueidis.Client, name string) int {
	t.Helper()
	info, err := c.Do(context.Background(), c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+name+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// ExecMulti pipelines EVALSHA without loading the script on every call (as
// rueidis's ExecMulti does), and a Redis that lost its scripts (SCRIPT FLUSH,
// a restart, a promoted replica) still runs every exec, by EVAL.
func TestExecMultiNeitherLoadsNorFails(t *testing.T) {
	c := scriptClient(t)
	ctx := context.Background()
	execs := func(round int) []rueidis.LuaExec {
		out := make([]rueidis.LuaExec, 5)
		for i := range out {
			out[i] = rueidis.LuaExec{Keys: []string{fmt.Sprintf("t:{em%d}:at", i)}, Args: []string{fmt.Sprintf("proxy-%d", round), "60000"}}
		}
		return out
	}
	check := func(round int) {
		for i, r := range registerLua.ExecMulti(ctx, c, execs(round)...) {
			if err := r.Error(); err != nil {
				t.Fatalf("round %d exec %d: %v", round, i, err)
			}
		}
		for i := range 5 {
			n, err := c.Do(ctx, c.B().Hexists().Key(fmt.Sprintf("t:{em%d}:at", i)).Field(fmt.Sprintf("proxy-%d", round)).Build()).AsBool()
			if err != nil || !n {
				t.Fatalf("round %d: exec %d did not run (%v)", round, i, err)
			}
		}
	}
	c.Do(ctx, c.B().ConfigResetstat().Build())
	check(0) // the first call: NOSCRIPT, then EVAL
	check(1)
	check(2)
	if n := commandCalls(t, c, "script|load"); n != 0 {
		t.Fatalf("%d SCRIPT LOADs for 3 calls, want none", n)
	}
	if n := commandCalls(t, c, "evalsha"); n != 15 {
		t.Fatalf("%d EVALSHAs, want 15 (5 execs x 3 calls)", n)
	}
	if err := c.Do(ctx, c.B().ScriptFlush().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	check(3)
	check(4)
}
