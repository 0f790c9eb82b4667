package redisengine_test

import (
	"context"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// BenchmarkNotifyDedupOneMember (hardening #1): one old note, then 20,000
// notes with one dedup_key to one member, against a real redis-server. It
// reports the Notify p50 of the first and of the last thousand and the
// script's time per call inside Redis (INFO commandstats) over each: with an
// index that grew under dedup the last thousand were ~6x slower.
//
//	go test -run XXX -bench NotifyDedup -benchtime 1x ./internal/engine/redisengine
func BenchmarkNotifyDedupOneMember(b *testing.B) {
	srv, e := startEngine(b)
	ctx := context.Background()
	seq := 0
	send := func(key string) time.Duration {
		seq++
		w := engine.NoteWrite{ID: "nb" + strconv.Itoa(seq), TS: time.Now().UnixMilli(), Note: wire.Notification{
			Members: []string{"m1"}, Type: "profile", Priority: wire.PriorityNormal, DedupKey: key,
			Payload: []byte(`{"n":1}`), TTL: 30 * 24 * time.Hour}}
		t0 := time.Now()
		if _, err := e.Notify(ctx, w); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	usec := regexp.MustCompile(`cmdstat_evalsha:calls=(\d+),usec=(\d+)`)
	scriptUS := func() (calls, us float64) {
		out, err := srv.Cli(ctx, "INFO", "commandstats")
		if err != nil {
			b.Fatal(err)
		}
		m := usec.FindStringSubmatch(out)
		if m == nil {
			return 0, 0
		}
		c, _ := strconv.ParseFloat(m[1], 64)
		u, _ := strconv.ParseFloat(m[2], 64)
		return c, u
	}
	thousand := func() (p50 time.Duration, perCall float64) {
		c0, u0 := scriptUS()
		lat := make([]time.Duration, 1000)
		for i := range lat {
			lat[i] = send("profile")
		}
		c1, u1 := scriptUS()
		slices.Sort(lat)
		return lat[500], (u1 - u0) / max(c1-c0, 1)
	}
	for range b.N {
		send("")
		firstP50, firstUS := thousand()
		for range 18 {
			thousand()
		}
		lastP50, lastUS := thousand()
		b.ReportMetric(float64(firstP50.Microseconds()), "first1k-p50-us")
		b.ReportMetric(float64(lastP50.Microseconds()), "last1k-p50-us")
		b.ReportMetric(firstUS, "first1k-script-us")
		b.ReportMetric(lastUS, "last1k-script-us")
		st, err := e.InboxStats(ctx, engine.Inbox{Kind: wire.InboxMember, ID: "m1"})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(st.IndexFields), "index-fields")
	}
}
