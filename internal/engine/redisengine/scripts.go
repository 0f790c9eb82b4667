package redisengine

import (
	"context"
	"crypto/sha1"
	"embed"
	"encoding/hex"
	"strings"

	"github.com/redis/rueidis"
)

// The Lua scripts live in scripts/*.lua, one per file, each opening with a
// comment block that states its keys, arguments, replies, atomicity and
// bounds; scripts_test.go runs each against a real redis-server for its edge
// cases. They are read once, at package init, from the binary (go:embed).
//
//go:embed scripts/*.lua
var scriptFiles embed.FS

// script returns scripts/<name>.lua, after the helper files it needs (e.g.
// "pos", whose functions it calls). A missing file is a build mistake: panic.
func script(name string, helpers ...string) string {
	var b strings.Builder
	for _, n := range append(helpers, name) {
		src, err := scriptFiles.ReadFile("scripts/" + n + ".lua")
		if err != nil {
			panic("redisengine: " + err.Error())
		}
		b.Write(src)
		b.WriteByte('\n')
	}
	return b.String()
}

// The scripts' sources (notifySrc is also sent with EVAL on a replica-wait
// connection) and their rueidis handles (EVALSHA, EVAL on NOSCRIPT).
var (
	setSrc      = script("set_stage")
	putMapSrc   = script("put_map")
	notifySrc   = script("notify", "pos")
	registerSrc = script("register")
	markReadSrc = script("mark_read", "pos")
	countSrc    = script("count")
	armSrc      = script("arm")
	cancelSrc   = script("cancel")
	fireSrc     = script("fire")

	setLua      = newLua(setSrc)
	putMapLua   = newLua(putMapSrc)
	notifyLua   = newLua(notifySrc)
	registerLua = newLua(registerSrc)
	markReadLua = newLua(markReadSrc)
	countLua    = newLua(countSrc)
	armLua      = newLua(armSrc)
	cancelLua   = newLua(cancelSrc)
	fireLua     = newLua(fireSrc)
)

// luaScript is a script's rueidis handle and its SHA-1. Its ExecMulti is
// rueidis's without the SCRIPT LOAD that rueidis sends to every node on each
// ExecMulti call: measured at one SCRIPT LOAD (the whole source, 10.6 us
// inside Redis) per notification (docs/benchmarks.md, issue 22 item 4).
type luaScript struct {
	lua  *rueidis.Lua
	src  string
	sha1 string
}

func newLua(src string) luaScript {
	sum := sha1.Sum([]byte(src))
	return luaScript{lua: rueidis.NewLuaScript(src), src: src, sha1: hex.EncodeToString(sum[:])}
}

// Exec runs the script once: EVALSHA, and EVAL when Redis does not hold it.
func (s luaScript) Exec(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	return s.lua.Exec(ctx, c, keys, args)
}

// ExecMulti runs the script once per exec: one pipeline of EVALSHA, then one
// of EVAL for the execs whose reply was NOSCRIPT (the first call on a node, a
// restart, a promoted replica that never ran it, SCRIPT FLUSH); EVAL leaves
// the script cached for the next EVALSHA. Replies are in the order of execs.
func (s luaScript) ExecMulti(ctx context.Context, c rueidis.Client, execs ...rueidis.LuaExec) []rueidis.RedisResult {
	if len(execs) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(execs))
	for i, x := range execs {
		cmds[i] = s.evalsha(c, x)
	}
	return s.doMulti(ctx, c, cmds, 0, execs)
}

func (s luaScript) evalsha(c rueidis.Client, x rueidis.LuaExec) rueidis.Completed {
	return c.B().Evalsha().Sha1(s.sha1).Numkeys(int64(len(x.Keys))).Key(x.Keys...).Arg(x.Args...).Build()
}

// doMulti sends cmds in one pipeline, where cmds[from+i] is the EVALSHA of
// execs[i] (the commands before from are others), and runs EVAL for each
// exec whose reply was NOSCRIPT. Replies are in the order of cmds.
func (s luaScript) doMulti(ctx context.Context, c rueidis.Client, cmds rueidis.Commands, from int, execs []rueidis.LuaExec) []rueidis.RedisResult {
	if len(cmds) == 0 {
		return nil
	}
	out := c.DoMulti(ctx, cmds...)
	var again []int
	for i := from; i < len(out); i++ {
		if err, ok := rueidis.IsRedisErr(out[i].Error()); ok && err.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return out
	}
	evals := make(rueidis.Commands, len(again))
	for j, i := range again {
		x := execs[i-from]
		evals[j] = c.B().Eval().Script(s.src).Numkeys(int64(len(x.Keys))).Key(x.Keys...).Arg(x.Args...).Build()
	}
	for j, r := range c.DoMulti(ctx, evals...) {
		out[again[j]] = r
	}
	return out
}
