package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagecast/stagecast/internal/engine"
	"github.com/stagecast/stagecast/internal/engine/redisengine"
	"github.com/stagecast/stagecast/internal/redistest"
)

// connect parses Redis flags as a server subcommand does and runs one stage
// change through the engine they configure.
func connect(t *testing.T, args ...string) error {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var rc redisengine.Config
	ro := redisFlags(fs, &rc)
	if err := parse(fs, args); err != nil {
		t.Fatal(err)
	}
	if err := ro.apply(&rc); err != nil {
		return err
	}
	rc.OpTimeout = 2 * time.Second
	eng, err := redisengine.New(rc)
	if err != nil {
		return err
	}
	defer eng.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = eng.SetStage(ctx, engine.SetRequest{Event: "ev", Key: "k", TS: 1})
	return err
}

// An ACL user with a password from a file: the default user may only PING.
func TestRedisACLUser(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Args: []string{
		"--user", "default", "on", "nopass", "-@all", "+ping",
		"--user", "stagecast", "on", ">s3cret-pw-for-tests", "~*", "&*", "+@all"}})
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret-pw-for-tests\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, "--redis", srv.Addr()); err == nil {
		t.Fatal("the default user could change a stage")
	}
	if err := connect(t, "--redis", srv.Addr(), "--redis-user", "stagecast", "--redis-password", "wrong"); err == nil {
		t.Fatal("a wrong password connected")
	}
	if err := connect(t, "--redis", srv.Addr(), "--redis-user", "stagecast", "--redis-password-file", pw); err != nil {
		t.Fatalf("user and password file: %v", err)
	}
}

// TLS: verified against the given CA; a plain connection or an unknown CA fails.
func TestRedisTLS(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{TLS: true})
	if err := connect(t, "--redis", srv.Addr(), "--redis-tls", "--redis-tls-ca", srv.CAFile()); err != nil {
		t.Fatalf("TLS with the CA: %v", err)
	}
	if err := connect(t, "--redis", srv.Addr(), "--redis-tls"); err == nil {
		t.Fatal("TLS without the test CA (system pool) connected: the certificate was not verified")
	}
	if err := connect(t, "--redis", srv.Addr()); err == nil {
		t.Fatal("plain TCP to a TLS-only Redis connected")
	}
	if err := connect(t, "--redis", srv.Addr(), "--redis-tls-ca", srv.CAFile()); err == nil {
		t.Fatal("--redis-tls-ca without --redis-tls was accepted")
	}
}
