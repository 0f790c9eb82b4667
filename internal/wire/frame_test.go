package wire

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestValidID(t *testing.T) {
	good := []string{"a", "fight-2026-11-15", "round-3", "x.y_z-1", "0", strings.Repeat("a", 128)}
	bad := []string{"", "-a", ".a", "A", "a b", "a/b", "é", strings.Repeat("a", 129), "a\x00"}
	for _, s := range good {
		if !ValidID(s) {
			t.Errorf("ValidID(%q) = false, want true", s)
		}
	}
	for _, s := range bad {
		if ValidID(s) {
			t.Errorf("ValidID(%q) = true, want false", s)
		}
		if CheckID("event", s) == nil {
			t.Errorf("CheckID(%q) = nil", s)
		}
	}
}

func TestParseDeviceFrame(t *testing.T) {
	f, err := ParseDeviceFrame([]byte(`{"op":"sub","events":{"fight-2026-11-15":41,"b":0}}`))
	if err != nil || f.Op != OpSub || f.Sub["fight-2026-11-15"] != 41 || len(f.Sub) != 2 {
		t.Fatalf("sub: %+v %v", f, err)
	}
	f, err = ParseDeviceFrame([]byte(`{"op":"unsub","events":["a","b"]}`))
	if err != nil || f.Op != OpUnsub || len(f.Unsub) != 2 {
		t.Fatalf("unsub: %+v %v", f, err)
	}
	f, err = ParseDeviceFrame([]byte(` {"op":"ack","event":"e","v":42} `))
	if err != nil || f.Event != "e" || f.V != 42 {
		t.Fatalf("ack: %+v %v", f, err)
	}

	notJSON := []string{``, `nope`, `{"op":`, `[1]`, `"str"`, "{\"op\":\"sub\"}\xff"}
	for _, s := range notJSON {
		if _, err := ParseDeviceFrame([]byte(s)); !errors.Is(err, ErrNotJSON) {
			t.Errorf("%q: err = %v, want ErrNotJSON", s, err)
		}
	}
	bad := map[string]Code{
		`{}`:                                               CodeBadRequest,
		`{"op":3}`:                                         CodeBadRequest,
		`{"op":"dance"}`:                                   CodeBadRequest,
		`{"op":"sub"}`:                                     CodeBadRequest,
		`{"op":"sub","events":{}}`:                         CodeBadRequest,
		`{"op":"sub","events":["a"]}`:                      CodeBadRequest,
		`{"op":"sub","events":{"A":1}}`:                    CodeBadRequest,
		`{"op":"sub","events":{"a":-1}}`:                   CodeBadRequest,
		`{"op":"sub","events":{"a":1.5}}`:                  CodeBadRequest,
		`{"op":"sub","events":{"a":"1"}}`:                  CodeBadRequest,
		`{"op":"unsub","events":{"a":1}}`:                  CodeBadRequest,
		`{"op":"unsub","events":["bad id"]}`:               CodeBadRequest,
		`{"op":"ack","event":"a"}`:                         CodeBadRequest,
		`{"op":"ack","event":"a","v":0}`:                   CodeBadRequest,
		`{"op":"ack","v":3}`:                               CodeBadRequest,
		`{"op":"ack","event":"a","v":1e3}`:                 CodeBadRequest,
		`{"op":"sub","events":{"a":99999999999999999999}}`: CodeBadRequest,
	}
	for s, code := range bad {
		_, err := ParseDeviceFrame([]byte(s))
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Code != code {
			t.Errorf("%s: err = %v, want code %s", s, err, code)
		}
	}
}

func TestAppendStageRoundTrip(t *testing.T) {
	s := Stage{Event: "fight-2026-11-15", Key: "round-3", V: 42, TS: 1763236800123}
	b := AppendStage(nil, &s)
	want := `{"op":"stage","event":"fight-2026-11-15","key":"round-3","v":42,"ts":1763236800123}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	f, err := ParseProxyFrame(b)
	if err != nil || f.Op != OpStage || f.Event != s.Event || f.Key != s.Key || f.V != 42 || f.TS != s.TS {
		t.Fatalf("round trip: %+v %v", f, err)
	}
	if !json.Valid(AppendError(nil, CodeBadRequest, "quote \" and \n newline")) {
		t.Fatal("error frame is not valid JSON")
	}
	rf, err := ParseProxyFrame(AppendReconnect(nil, 1830))
	if err != nil || rf.AfterMS != 1830 {
		t.Fatalf("reconnect: %+v %v", rf, err)
	}
	sub := AppendSub(nil, map[string]uint64{"a": 1, "b": 0})
	df, err := ParseDeviceFrame(sub)
	if err != nil || df.Sub["a"] != 1 || len(df.Sub) != 2 {
		t.Fatalf("sub round trip: %s %+v %v", sub, df, err)
	}
	df, err = ParseDeviceFrame(AppendAck(nil, "a", 7))
	if err != nil || df.V != 7 {
		t.Fatalf("ack round trip: %+v %v", df, err)
	}
}

func TestTargetMatches(t *testing.T) {
	var none *Target
	if !none.Matches("tv", "") {
		t.Fatal("nil target must match")
	}
	tg := &Target{Platforms: []string{"tv", "console"}, Segments: []string{"s1"}}
	cases := []struct {
		p, s string
		want bool
	}{{"tv", "s1", true}, {"console", "s1", true}, {"mobile", "s1", false}, {"tv", "s2", false}, {"tv", "", false}}
	for _, c := range cases {
		if got := tg.Matches(c.p, c.s); got != c.want {
			t.Errorf("Matches(%q,%q) = %v", c.p, c.s, got)
		}
	}
	if (&Target{Platforms: []string{"TV"}}).Validate() == nil {
		t.Fatal("bad platform accepted")
	}
}

func TestStageMarshalRoundTrip(t *testing.T) {
	in := Stage{Event: "e", Key: "k", V: 3, TS: 9, Target: &Target{Platforms: []string{"tv"}}}
	b, err := MarshalStage(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := UnmarshalStage(b)
	if err != nil || out.V != 3 || out.Target == nil || out.Target.Platforms[0] != "tv" {
		t.Fatalf("%+v %v", out, err)
	}
	if _, err := UnmarshalStage([]byte(`{"event":"e","key":"k","v":0}`)); err == nil {
		t.Fatal("version 0 accepted")
	}
}

// FuzzParseDeviceFrame: the decoder never panics, and what it accepts is valid.
func FuzzParseDeviceFrame(f *testing.F) {
	for _, s := range []string{
		`{"op":"sub","events":{"a":1}}`, `{"op":"unsub","events":["a"]}`,
		`{"op":"ack","event":"a","v":2}`, `{}`, `[`, `{"op":"sub","events":{"a":-0}}`,
		"{\"op\":\"sub\",\"events\":{\"\xff\":0}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ParseDeviceFrame(b)
		if err == nil && !utf8.Valid(b) {
			t.Fatalf("accepted invalid UTF-8 %q", b)
		}
		if err != nil {
			var fe *FrameError
			if !errors.Is(err, ErrNotJSON) && !errors.As(err, &fe) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		switch fr.Op {
		case OpSub:
			for ev := range fr.Sub {
				if !ValidID(ev) {
					t.Fatalf("accepted bad event %q", ev)
				}
			}
		case OpUnsub:
			for _, ev := range fr.Unsub {
				if !ValidID(ev) {
					t.Fatalf("accepted bad event %q", ev)
				}
			}
		case OpAck:
			if !ValidID(fr.Event) || fr.V == 0 {
				t.Fatalf("accepted bad ack %+v", fr)
			}
		default:
			t.Fatalf("accepted op %q", fr.Op)
		}
	})
}

func TestParseStageMap(t *testing.T) {
	m, err := ParseStageMap([]byte(`{"stages":{"round-3":{"default":{"rows":[1]},"segments":{"s1":{"rows":[2]}}}},"ttl_seconds":300}`))
	if err != nil || m.TTLSeconds != 300 {
		t.Fatalf("%+v %v", m, err)
	}
	if p, ok := m.Payload("round-3", "s1"); !ok || string(p) != `{"rows":[2]}` {
		t.Fatalf("segment payload %s", p)
	}
	if p, ok := m.Payload("round-3", "s9"); !ok || string(p) != `{"rows":[1]}` {
		t.Fatalf("default payload %s", p)
	}
	if _, ok := m.Payload("nope", ""); ok {
		t.Fatal("missing stage found")
	}
	bad := []string{
		``, `[]`, `{}`, `{"stages":{}}`, `{"stages":{"BAD":{"default":1}}}`,
		`{"stages":{"a":{}}}`, `{"stages":{"a":{"default":null}}}`,
		`{"stages":{"a":{"default":1,"segments":{"S 1":2}}}}`,
		`{"stages":{"a":{"default":1}},"ttl_seconds":-1}`, `{"stages":{"a":{"default":1}},"ttl_seconds":999999}`,
		`{"stages":{"a":{"default":1}},"typo":1}`, `{"stages":{"a":{"default":1}}} {}`,
	}
	for _, b := range bad {
		if _, err := ParseStageMap([]byte(b)); err == nil {
			t.Errorf("accepted %s", b)
		}
	}
}

func FuzzParseStageMap(f *testing.F) {
	f.Add([]byte(`{"stages":{"a":{"default":{"x":1},"segments":{"s":2}}},"ttl_seconds":60}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseStageMap(b)
		if err != nil {
			return
		}
		for k, p := range m.Stages {
			if !ValidID(k) || len(p.Default) == 0 {
				t.Fatalf("accepted stage %q %+v", k, p)
			}
		}
	})
}

func TestInvalidUTF8IsNotJSON(t *testing.T) {
	for _, b := range []string{"{\"op\":\"sub\",\"events\":{\"a\xff\":0}}", "{\"op\":\"ack\",\"event\":\"a\",\"v\":1,\"x\":\"\xc3\x28\"}"} {
		if _, err := ParseDeviceFrame([]byte(b)); !errors.Is(err, ErrNotJSON) {
			t.Errorf("%q: %v, want ErrNotJSON (close 1007)", b, err)
		}
	}
}

func TestEventErrorFrame(t *testing.T) {
	b := AppendEventError(nil, CodeUnknownEvent, "fight-1", `no such "event"`)
	f, err := ParseProxyFrame(b)
	if err != nil || f.Op != OpError || f.Code != CodeUnknownEvent || f.Event != "fight-1" || f.Msg != `no such "event"` {
		t.Fatalf("%s -> %+v %v", b, f, err)
	}
}

func TestPatterns(t *testing.T) {
	if err := CheckPatterns([]string{"fight-2026-11-15", "nfl-*", "*"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{"Fight"}, {"a*b"}, {"-x*"}, {""}, make([]string, 65)} {
		if err := CheckPatterns(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	ps := Patterns{"fight-*", "nfl-xmas"}
	for ev, want := range map[string]bool{"fight-1": true, "fight-": true, "nfl-xmas": true, "nfl-xmas-2": false, "figh": false} {
		if ps.Match(ev) != want {
			t.Errorf("Match(%q) != %v", ev, want)
		}
	}
	if !Patterns(nil).Match("any") || (Patterns{}).Match("any") {
		t.Error("nil must match all, empty none")
	}
}

// Hashed refetch slots: reproducible per device, within the window, and
// uniform over 100,000 devices (each second of a 30 s window within 10 % of
// the mean).
func TestRefetchDelayUniform(t *testing.T) {
	const n, window, slots = 100000, 30 * time.Second, 300
	bins := make([]int, 30)
	for i := 0; i < n; i++ {
		id := "d" + strconv.Itoa(i)
		d := RefetchDelay(id, window, slots)
		if d < 0 || d >= window || d != RefetchDelay(id, window, slots) {
			t.Fatalf("%s: delay %v", id, d)
		}
		bins[int(d.Seconds())]++
	}
	mean := float64(n) / 30
	for s, c := range bins {
		if math.Abs(float64(c)/mean-1) > 0.10 {
			t.Fatalf("second %d holds %d refetches, mean %.0f: not within 10%%", s, c, mean)
		}
	}
}

func TestStageFrameDigest(t *testing.T) {
	s := Stage{Event: "ev", Key: "k", V: 7, TS: 1, Digest: "0123456789ab"}
	f, err := ParseProxyFrame(AppendStage(nil, &s))
	if err != nil || f.D != "0123456789ab" {
		t.Fatalf("%+v %v", f, err)
	}
	m, _ := ParseStageMap([]byte(`{"stages":{"k":{"default":{"a": 1},"segments":{"s2":2,"s1":1}}}}`))
	m2, _ := ParseStageMap([]byte(`{"stages":{"k":{"default":{"a":1},"segments":{"s1":1,"s2":2}}}}`))
	if d := m.Digests()["k"]; d != m2.Digests()["k"] || !ValidDigest(d) {
		t.Fatalf("digest depends on formatting or key order: %s vs %s", d, m2.Digests()["k"])
	}
	if (&Stage{Event: "ev", Key: "k", V: 1, Digest: "zz"}).Validate() == nil {
		t.Fatal("a bad digest validated")
	}
}

// TestNoteBodyFields: the type and priority read back from a stored body;
// a body without them, or with a type that is not an id, gives the defaults.
func TestNoteBodyFields(t *testing.T) {
	body := AppendNoteBody(nil, "n1", &Notification{Type: "goal", Priority: PriorityHigh, Payload: []byte(`{"type":"x"}`)}, 5)
	if got := NoteBodyType(body); got != "goal" {
		t.Fatalf("type %q", got)
	}
	if got := NoteBodyPriority(body); got != PriorityHigh {
		t.Fatalf("priority %v", got)
	}
	for _, b := range []string{``, `{"nid":"n1"}`, `{"type":"`, `{"type":"a b"}`, `{"type":""}`} {
		if got := NoteBodyType([]byte(b)); got != "" {
			t.Errorf("NoteBodyType(%s) = %q, want \"\"", b, got)
		}
	}
}
