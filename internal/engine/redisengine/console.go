package redisengine

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

// The console's reads. Keys:
//
//	sc:events          sorted set: event -> last stage change or map store (ms),
//	                   the newest engine.MaxIndexedEvents kept
//	sc:{E}:audit       list of audit entries (JSON), newest first, engine.MaxAudit kept

const eventIndex = "sc:events"

// touch records event's activity in the event index. Best effort: the index
// only orders the console's list; a failure is logged, never returned.
func (e *Engine) touch(_ context.Context, event string) { e.index.add(event, e.cfg.Now().UnixMilli()) }

// eventIndexer keeps sc:events off the stage-change path (hardening #8): a
// change only notes its event here, and one goroutine writes the index every
// indexEvery, retrying what failed, so a failover of the index's shard delays
// the console's list, never a stage change. Pending events are bounded
// (engine.MaxIndexedEvents; past it the update is dropped and counted in the
// log).
type eventIndexer struct {
	e       *Engine
	mu      sync.Mutex
	pending map[string]int64 // event -> last change, Unix ms
	done    chan struct{}
}

const indexEvery = 50 * time.Millisecond

func newEventIndexer(e *Engine) *eventIndexer {
	return &eventIndexer{e: e, pending: make(map[string]int64), done: make(chan struct{})}
}

func (x *eventIndexer) add(event string, ms int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.pending[event]; ok || len(x.pending) < engine.MaxIndexedEvents {
		x.pending[event] = ms
	}
}

func (x *eventIndexer) run(ctx context.Context) {
	defer close(x.done)
	t := time.NewTicker(indexEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		x.mu.Lock()
		var batch map[string]int64
		if len(x.pending) > 0 {
			batch, x.pending = x.pending, make(map[string]int64)
		}
		x.mu.Unlock()
		if batch == nil {
			continue
		}
		if err := x.write(ctx, batch); err != nil {
			x.e.cfg.Logger.Warn("event index not updated; retrying", "events", len(batch), "err", err)
			x.mu.Lock()
			for ev, ms := range batch {
				if cur, ok := x.pending[ev]; !ok || cur < ms {
					if ok || len(x.pending) < engine.MaxIndexedEvents {
						x.pending[ev] = ms
					}
				}
			}
			x.mu.Unlock()
		}
	}
}

func (x *eventIndexer) write(ctx context.Context, batch map[string]int64) error {
	ctx, cancel := context.WithTimeout(ctx, x.e.cfg.OpTimeout)
	defer cancel()
	c := x.e.client
	z := c.B().Zadd().Key(eventIndex).ScoreMember()
	for ev, ms := range batch {
		z = z.ScoreMember(float64(ms), ev)
	}
	for _, r := range c.DoMulti(ctx, z.Build(),
		c.B().Zremrangebyrank().Key(eventIndex).Start(0).Stop(-int64(engine.MaxIndexedEvents)-1).Build()) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// Events lists up to limit events, the most recently changed first.
func (e *Engine) Events(ctx context.Context, limit int) ([]engine.EventSummary, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	c := e.client
	zs, err := c.Do(ctx, c.B().Zrevrange().Key(eventIndex).Start(0).Stop(int64(limit)-1).Withscores().Build()).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	cmds := make(rueidis.Commands, 0, 3*len(zs))
	for _, z := range zs {
		cmds = append(cmds,
			c.B().Xrevrange().Key(key(z.Member, "log")).End("+").Start("-").Count(1).Build(),
			c.B().Exists().Key(key(z.Member, "live")).Build(),
			c.B().Exists().Key(key(z.Member, "map")).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	out := make([]engine.EventSummary, 0, len(zs))
	for i, z := range zs {
		s := engine.EventSummary{Event: z.Member, UpdatedMS: int64(z.Score)}
		if entries, err := res[3*i].AsXRange(); err == nil && len(entries) == 1 {
			if st, err := wire.UnmarshalStage([]byte(entries[0].FieldValues["s"])); err == nil {
				s.Current = &st
			}
		} else if err != nil {
			return nil, fmt.Errorf("events: %s: %w", z.Member, err)
		}
		live, _ := res[3*i+1].AsInt64()
		hasMap, _ := res[3*i+2].AsInt64()
		s.Live, s.HasMap = live == 1, hasMap == 1
		if s.Current == nil && !s.HasMap {
			continue // expired since it was indexed
		}
		out = append(out, s)
	}
	return out, nil
}

// PutAudit adds an entry to the event's audit trail.
func (e *Engine) PutAudit(ctx context.Context, event string, a engine.AuditEntry) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	c, k := e.client, key(event, "audit")
	for _, r := range c.DoMulti(ctx,
		c.B().Lpush().Key(k).Element(string(b)).Build(),
		c.B().Ltrim().Key(k).Start(0).Stop(engine.MaxAudit-1).Build(),
		c.B().Pexpire().Key(k).Milliseconds(e.cfg.EventTTL.Milliseconds()).Build()) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("audit %s: %w", event, err)
		}
	}
	return nil
}

// Audit returns up to n of the event's audit entries, newest first.
func (e *Engine) Audit(ctx context.Context, event string, n int) ([]engine.AuditEntry, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	items, err := e.client.Do(ctx, e.client.B().Lrange().Key(key(event, "audit")).Start(0).Stop(int64(n)-1).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("audit %s: %w", event, err)
	}
	out := make([]engine.AuditEntry, 0, len(items))
	for _, it := range items {
		var a engine.AuditEntry
		if json.Unmarshal([]byte(it), &a) == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

const proxyLoads = "sc:proxies"

// PutProxyLoad stores a proxy's load (a field of one hash; entries of proxies
// gone for good are pruned by ProxyLoads).
func (e *Engine) PutProxyLoad(ctx context.Context, l engine.ProxyLoad) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return e.client.Do(ctx, e.client.B().Hset().Key(proxyLoads).FieldValue().FieldValue(l.ID, string(b)).Build()).Error()
}

// ProxyLoads returns every proxy's load reported within engine.ProxyLoadTTL.
func (e *Engine) ProxyLoads(ctx context.Context, nowMS int64) ([]engine.ProxyLoad, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	m, err := e.client.Do(ctx, e.client.B().Hgetall().Key(proxyLoads).Build()).AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("proxy loads: %w", err)
	}
	var out []engine.ProxyLoad
	for id, v := range m {
		var l engine.ProxyLoad
		// An entry from the future (a skewed clock, or a hostile writer) would
		// never age out: it counts as not reported and is pruned.
		if json.Unmarshal([]byte(v), &l) != nil || nowMS-l.AtMS > 10*engine.ProxyLoadTTL || l.AtMS-nowMS > engine.ProxyLoadTTL {
			_ = e.client.Do(ctx, e.client.B().Hdel().Key(proxyLoads).Field(id).Build()).Error()
			continue
		}
		if nowMS-l.AtMS <= engine.ProxyLoadTTL {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
