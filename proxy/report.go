package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// versionStats counts one version's delivery on this proxy.
type versionStats struct {
	v     uint64
	sent  atomic.Uint64
	acked atomic.Uint64
	// Per (platform, segment) cell and per platform, for the analytics stream
	// (segments.go): sends, acks, sends from history at subscribe, and coarse
	// time-to-device buckets.
	sentBy   [numCells]atomic.Uint64
	ackedBy  [numCells]atomic.Uint64
	catchups [numCells]atomic.Uint64
	latBy    [numPlatforms][numLatBounds]atomic.Uint64
	dirty    atomic.Bool

	mu  sync.Mutex
	lat *hdrhistogram.Histogram // ms from the stage's ts to each send
}

const maxLatencyMS = 3_600_000

// statsFor returns (creating) the stats of s's version, keeping at most
// StatsVersions versions. Caller holds t.mu.
func (t *topic) statsFor(s wire.Stage) *versionStats {
	if st := t.stats[s.V]; st != nil {
		return st
	}
	st := &versionStats{v: s.V, lat: hdrhistogram.New(1, maxLatencyMS, 2)}
	t.stats[s.V] = st
	for len(t.stats) > t.s.cfg.StatsVersions {
		var oldest uint64
		for v := range t.stats {
			if oldest == 0 || v < oldest {
				oldest = v
			}
		}
		delete(t.stats, oldest)
	}
	return st
}

func (st *versionStats) markDirty() {
	if !st.dirty.Load() {
		st.dirty.Store(true)
	}
}

// snapshot returns the running totals as a sparse histogram, with the
// non-empty cells (named by segs).
func (st *versionStats) snapshot(segs *labelTable) engine.VersionDelivery {
	vd := engine.VersionDelivery{V: st.v, Sent: st.sent.Load(), Acked: st.acked.Load()}
	for i := range st.sentBy {
		s, a, cu := st.sentBy[i].Load(), st.ackedBy[i].Load(), st.catchups[i].Load()
		if s > 0 || a > 0 || cu > 0 {
			vd.Cells = append(vd.Cells, engine.CellCount{Platform: platformNames[i/numSegSlots], Segment: segs.name(i % numSegSlots),
				Sent: s, Acked: a, CatchUps: cu})
		}
	}
	for p := range st.latBy {
		for b := range st.latBy[p] {
			if n := st.latBy[p][b].Load(); n > 0 {
				if vd.PlatformLatency == nil {
					vd.PlatformLatency = map[string][]engine.Bucket{}
				}
				vd.PlatformLatency[platformNames[p]] = append(vd.PlatformLatency[platformNames[p]], engine.Bucket{UpperMS: platLatBounds[b], Count: n})
			}
		}
	}
	st.mu.Lock()
	for _, b := range st.lat.Distribution() {
		if b.Count > 0 {
			vd.Latency = append(vd.Latency, engine.Bucket{UpperMS: b.To, Count: uint64(b.Count)})
		}
	}
	st.mu.Unlock()
	return vd
}

// reportLoop publishes this proxy's aggregates every ReportInterval and sweeps
// lingering topics. It stops with the server.
func (s *Server) reportLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.ReportInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		s.hub.sweep(s.cfg.Now())
		s.flushReport(s.ctx)
		s.notes.flushCounts(s.ctx)
		s.readTierLoad(s.ctx)
	}
}

// flushReport sends one delivery report (devices per event, and every version
// whose counters changed since the last report).
func (s *Server) flushReport(ctx context.Context) {
	rep := engine.DeliveryReport{Proxy: s.cfg.ID, AtMS: s.cfg.Now().UnixMilli()}
	for _, t := range s.hub.all() {
		t.mu.RLock()
		ed := engine.EventDelivery{Event: t.event, Devices: int64(t.devices())}
		for i, n := range t.byCell {
			if n > 0 {
				ed.DeviceCells = append(ed.DeviceCells, engine.CellDevices{Platform: platformNames[i/numSegSlots], Segment: s.segments.name(i % numSegSlots), Devices: n})
			}
		}
		var dirty []*versionStats
		for _, st := range t.stats {
			if st.dirty.Swap(false) {
				dirty = append(dirty, st)
			}
		}
		t.mu.RUnlock()
		for _, st := range dirty {
			ed.Versions = append(ed.Versions, st.snapshot(s.segments))
		}
		rep.Events = append(rep.Events, ed)
	}
	if s.cfg.OnReport != nil {
		s.cfg.OnReport(rep)
	}
	if s.cfg.OnActivity != nil {
		s.connsMu.Lock()
		n := len(s.conns)
		s.connsMu.Unlock()
		a := s.act.take(s.cfg.Now(), n)
		a.Notes = s.notes.takeClasses()
		s.cfg.OnActivity(a)
	}
	if len(rep.Events) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.eng.PutDelivery(rctx, rep); err != nil {
		s.metrics.engineErrors.Inc()
		s.log.Warn("delivery report not published", "err", err)
		// Mark everything dirty again so the next report carries it.
		for _, t := range s.hub.all() {
			t.mu.RLock()
			for _, st := range t.stats {
				st.dirty.Store(true)
			}
			t.mu.RUnlock()
		}
	}
}
