package redisengine

// Armed stages on Redis. Per event E (hash tag {E}):
//
//	sc:{E}:sched   hash: schedule id -> the armed stage message (stage JSON with "arm")
//
// and one global index sc:schedules (sorted set "<E>\n<id>" -> fire time, ms),
// which broadcasters poll to fire due schedules centrally.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/wire"
)

const scheduleIndex = "sc:schedules"

func indexMember(event, id string) string { return event + "\n" + id }

// Arm stores and publishes a schedule; it returns the armed stage message.
func (e *Engine) Arm(ctx context.Context, req engine.ArmRequest) (wire.Stage, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	type prefix struct {
		Event    string       `json:"event"`
		Key      string       `json:"key"`
		TS       int64        `json:"ts"`
		Target   *wire.Target `json:"target,omitempty"`
		Priority string       `json:"priority,omitempty"`
		Arm      wire.Arm     `json:"arm"`
	}
	p := prefix{Event: req.Event, Key: req.Key, TS: req.AtMS, Arm: wire.Arm{ID: req.ID, At: req.AtMS}}
	if !req.Target.IsZero() {
		p.Target = req.Target
	}
	if req.Critical {
		p.Priority = wire.PriorityCritical.String()
	}
	b, err := json.Marshal(p)
	if err != nil {
		return wire.Stage{}, err
	}
	// The due index first (another slot): an entry whose arm then fails is
	// harmless (its fire finds nothing), while an arm the index missed would
	// be fired by proxies only. NX: arming an id again keeps its entry.
	if err := e.fast.Do(ctx, e.fast.B().Zadd().Key(scheduleIndex).Nx().ScoreMember().
		ScoreMember(float64(req.AtMS), indexMember(req.Event, req.ID)).Build()).Error(); err != nil {
		return wire.Stage{}, fmt.Errorf("arm %s/%s: due index: %w", req.Event, req.ID, err)
	}
	msg, err := e.runDurable(ctx, armLua, armSrc,
		[]string{key(req.Event, "log"), key(req.Event, "sched"), key(req.Event, "stage"), key(req.Event, "dig")},
		[]string{req.ID, req.Key, strconv.FormatInt(req.AtMS, 10), string(b[:len(b)-1]),
			strconv.FormatInt(e.cfg.EventTTL.Milliseconds(), 10), strconv.Itoa(engine.MaxSchedules)})
	if err != nil {
		return wire.Stage{}, fmt.Errorf("arm %s/%s: %w", req.Event, req.ID, refusal(err))
	}
	raw, err := msg.ToString()
	if err != nil {
		return wire.Stage{}, fmt.Errorf("arm %s/%s: %w", req.Event, req.ID, err)
	}
	st, err := wire.UnmarshalStage([]byte(raw))
	if err != nil {
		return wire.Stage{}, fmt.Errorf("arm %s/%s: %w", req.Event, req.ID, err)
	}
	return st, nil
}

// refusal turns a script's SCHEDULE_* error reply into the engine's typed error.
func refusal(err error) error {
	if re, ok := rueidis.IsRedisErr(err); ok {
		switch {
		case strings.HasPrefix(re.Error(), "SCHEDULE_LIMIT"):
			return engine.ErrTooManySchedules
		case strings.HasPrefix(re.Error(), "SCHEDULE_CONFLICT"):
			return engine.ErrScheduleConflict
		}
	}
	return err
}

// runDurable runs a script, and with WaitReplicas WAIT on the same dedicated
// connection (an acknowledged arm or cancel is on the replicas too).
func (e *Engine) runDurable(ctx context.Context, lua luaScript, src string, keys, args []string) (rueidis.RedisMessage, error) {
	if e.cfg.WaitReplicas <= 0 {
		return lua.Exec(ctx, e.fast, keys, args).ToMessage()
	}
	var msg rueidis.RedisMessage
	err := e.fast.Dedicated(func(dc rueidis.DedicatedClient) error {
		var err error
		msg, err = dc.Do(ctx, dc.B().Eval().Script(src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()).ToMessage()
		if err != nil {
			return err
		}
		return e.waitReplicas(ctx, dc)
	})
	return msg, err
}

// Schedules lists an event's armed schedules, by fire time.
func (e *Engine) Schedules(ctx context.Context, event string) ([]wire.Stage, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	vals, err := e.client.Do(ctx, e.client.B().Hvals().Key(key(event, "sched")).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("schedules %s: %w", event, err)
	}
	out := make([]wire.Stage, 0, len(vals))
	for _, v := range vals {
		if st, err := wire.UnmarshalStage([]byte(v)); err == nil && st.Arm != nil {
			out = append(out, st)
		}
	}
	sortByAt(out)
	return out, nil
}

func sortByAt(s []wire.Stage) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].Arm.At < s[j-1].Arm.At; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// CancelSchedule cancels schedule id of event if it has version v (0: any).
func (e *Engine) CancelSchedule(ctx context.Context, event, id string, v uint64) error {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	want := ""
	if v != 0 {
		want = strconv.FormatUint(v, 10)
	}
	msg, err := e.runDurable(ctx, cancelLua, cancelSrc, []string{key(event, "sched"), key(event, "stage")}, []string{id, want})
	var n int64
	if err == nil {
		n, err = msg.AsInt64()
	}
	if err != nil {
		return fmt.Errorf("cancel %s/%s: %w", event, id, err)
	}
	switch n {
	case 0:
		return engine.ErrScheduleNotFound
	case -1:
		return engine.ErrScheduleChanged
	}
	_ = e.fast.Do(ctx, e.fast.B().Zrem().Key(scheduleIndex).Member(indexMember(event, id)).Build()).Error()
	return nil
}

// DueSchedules lists schedules due at nowMS (at most limit).
func (e *Engine) DueSchedules(ctx context.Context, nowMS int64, limit int) ([]engine.ScheduleRef, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	zs, err := e.fast.Do(ctx, e.fast.B().Zrangebyscore().Key(scheduleIndex).Min("-inf").Max(strconv.FormatInt(nowMS, 10)).
		Withscores().Limit(0, int64(limit)).Build()).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("due schedules: %w", err)
	}
	out := make([]engine.ScheduleRef, 0, len(zs))
	for _, z := range zs {
		ev, id, ok := strings.Cut(z.Member, "\n")
		if ok {
			out = append(out, engine.ScheduleRef{Event: ev, ID: id, AtMS: int64(z.Score)})
		}
	}
	return out, nil
}

// FireSchedule makes schedule id a stage change with its armed version.
func (e *Engine) FireSchedule(ctx context.Context, event, id string) (wire.Stage, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	res, err := fireLua.Exec(ctx, e.fast,
		[]string{key(event, "log"), key(event, "sched"), key(event, "stage")},
		[]string{id, strconv.Itoa(e.cfg.LogLen), strconv.FormatInt(e.cfg.EventTTL.Milliseconds(), 10)}).ToArray()
	if err != nil || len(res) != 3 {
		return wire.Stage{}, fmt.Errorf("fire %s/%s: %v", event, id, err)
	}
	_ = e.fast.Do(ctx, e.fast.B().Zrem().Key(scheduleIndex).Member(indexMember(event, id)).Build()).Error()
	code, _ := res[0].AsInt64()
	switch code {
	case 0:
		return wire.Stage{}, engine.ErrScheduleNotFound
	case 2:
		return wire.Stage{}, engine.ErrScheduleSuperseded
	}
	raw, _ := res[1].ToString()
	st, err := wire.UnmarshalStage([]byte(raw))
	if err != nil {
		return wire.Stage{}, fmt.Errorf("fire %s/%s: %w", event, id, err)
	}
	e.touch(ctx, event)
	return st, nil
}

// Time is Redis's clock (TIME).
func (e *Engine) Time(ctx context.Context) (time.Time, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	vals, err := e.fast.Do(ctx, e.fast.B().Time().Build()).AsStrSlice()
	if err != nil || len(vals) != 2 {
		return time.Time{}, fmt.Errorf("redis time: %v", err)
	}
	sec, _ := strconv.ParseInt(vals[0], 10, 64)
	usec, _ := strconv.ParseInt(vals[1], 10, 64)
	return time.Unix(sec, usec*1000), nil
}
