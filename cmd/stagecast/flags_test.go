package main

import (
	"flag"
	"testing"
	"time"
)

func TestParseEnvAndInterleavedFlags(t *testing.T) {
	t.Setenv("STAGECAST_WRITE_TIMEOUT", "7s")
	t.Setenv("STAGECAST_MAX_CONNECTIONS", "123")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	wt := fs.Duration("write-timeout", time.Second, "")
	mc := fs.Int("max-connections", 1, "")
	pl := fs.String("platforms", "", "")
	if err := parse(fs, []string{"set", "ev", "--max-connections", "5", "round-3", "--platforms", "tv"}); err != nil {
		t.Fatal(err)
	}
	if *wt != 7*time.Second {
		t.Fatalf("env override not applied: %v", *wt)
	}
	if *mc != 5 {
		t.Fatalf("command line must win over env: %d", *mc)
	}
	if *pl != "tv" {
		t.Fatalf("flag after positional args ignored: %q", *pl)
	}
	if got := positional(fs); len(got) != 3 || got[0] != "set" || got[2] != "round-3" {
		t.Fatalf("positional = %v", got)
	}
	t.Setenv("STAGECAST_WRITE_TIMEOUT", "soon")
	fs2 := flag.NewFlagSet("y", flag.ContinueOnError)
	fs2.Duration("write-timeout", time.Second, "")
	if err := parse(fs2, nil); err == nil {
		t.Fatal("bad env value accepted")
	}
}
