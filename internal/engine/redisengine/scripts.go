package redisengine

import (
	"embed"
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
// connection) and their rueidis handles (EVALSHA, loading on NOSCRIPT).
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

	setLua      = rueidis.NewLuaScript(setSrc)
	putMapLua   = rueidis.NewLuaScript(putMapSrc)
	notifyLua   = rueidis.NewLuaScript(notifySrc)
	registerLua = rueidis.NewLuaScript(registerSrc)
	markReadLua = rueidis.NewLuaScript(markReadSrc)
	countLua    = rueidis.NewLuaScript(countSrc)
	armLua      = rueidis.NewLuaScript(armSrc)
	cancelLua   = rueidis.NewLuaScript(cancelSrc)
	fireLua     = rueidis.NewLuaScript(fireSrc)
)
