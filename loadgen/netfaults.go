package loadgen

import (
	"context"
	"time"
)

// settledFor is how long after the broadcaster acknowledged a stage change
// a device is expected to hold it; a device behind a change older than this
// is stale (during a network fault: cut from it).
const settledFor = time.Second

// latestSettled is the newest version the broadcaster acknowledged at least
// settledFor before now.
func (r *liveRun) latestSettled(now time.Time) uint64 {
	var v uint64
	for i := range r.versionOf {
		at := r.storedAt[i].Load()
		if at != 0 && now.Sub(time.Unix(0, at)) >= settledFor {
			v = max(v, r.versionOf[i].Load())
		}
	}
	return v
}

// healOpen marks every network fault still open (no heal time yet) healed at t.
func (r *liveRun) healOpen(t time.Time) {
	for _, fr := range r.faults {
		if fr.fault.network() && fr.fault.Action != "heal" && !fr.at.IsZero() {
			fr.setHeal(t)
		}
	}
}

func (fr *faultRun) setHeal(t time.Time) {
	fr.healNS.CompareAndSwap(0, t.UnixNano())
}

func (fr *faultRun) healAt() (time.Time, bool) {
	ns := fr.healNS.Load()
	return time.Unix(0, ns), ns != 0
}

// watchNetwork follows a network fault (a partition, a black hole, a delay,
// ...) until the fleet recovered: the moment every device is connected and
// holds every stage the broadcaster acknowledged more than settledFor ago,
// once the fault healed and 2 s passed without a device down or stale. It
// also polls the fleet for when the member the fault hit stopped being ready
// (NoticedMS: the member saw it). Devices stay connected through most network
// faults, so a stale device, not a disconnected one, is what a partition
// shows.
func (fr *faultRun) watchNetwork(ctx context.Context, r *liveRun, reconnects func() int64) {
	defer close(fr.done)
	defer func() { fr.stats.Reconnects = reconnects() }()
	fr.stats.NoticedMS = -1
	if fr.fault.Action == "heal" {
		return
	}
	const quiet = 2 * time.Second
	limit := fr.at.Add(fr.fault.Duration.D() + 10*time.Minute)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastBad, lastPoll time.Time
	for {
		now := time.Now()
		if fr.stats.NoticedMS < 0 && now.Sub(lastPoll) >= 250*time.Millisecond && r.cfg.Fleet != nil {
			lastPoll = now
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ms, err := r.cfg.Fleet.Members(pctx)
			cancel()
			for _, m := range ms {
				if err == nil && m.Name == fr.stats.Member && m.Ready != nil && !*m.Ready {
					fr.stats.NoticedMS = float64(time.Since(fr.at).Microseconds()) / 1000
				}
			}
		}
		r.mu.Lock()
		ds := append([]*liveDevice(nil), r.devices...)
		r.mu.Unlock()
		v := r.latestSettled(now)
		var down, stale int64
		for _, d := range ds {
			if !d.c.Connected() {
				down++
			}
			if _, held := d.c.State(r.sc.Event); held < v {
				stale++
			}
		}
		fr.stats.DevicesAffected = max(fr.stats.DevicesAffected, down, stale)
		if down > 0 || stale > 0 {
			lastBad = now
		}
		healed, isHealed := fr.healAt()
		switch {
		case isHealed && now.Sub(healed) >= quiet && (lastBad.IsZero() || now.Sub(lastBad) >= quiet):
			fr.stats.HealedMS = float64(healed.Sub(fr.at).Microseconds()) / 1000
			if lastBad.IsZero() {
				fr.stats.RecoveredMS = 0
			} else {
				fr.stats.RecoveredMS = float64(lastBad.Sub(fr.at).Microseconds()) / 1000
				fr.stats.RecoveredAfterHealMS = max(0, float64(lastBad.Sub(healed).Microseconds())/1000)
			}
			return
		case now.After(limit):
			fr.stats.RecoveredMS = -1
			return
		}
		select {
		case <-ctx.Done():
			fr.stats.RecoveredMS = -1
			return
		case <-tick.C:
		}
	}
}
