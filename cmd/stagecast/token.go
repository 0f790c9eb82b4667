package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/wire"
)

const tokenUsage = `Usage:
  stagecast token keygen --out DIR [--kid ID]
      writes DIR/device-signing.jwk (private, mode 0600) and adds the public key
      to DIR/device-keys.jwks (kept keys still verify: rotation). An existing
      signing key is kept as DIR/device-signing.<kid>.jwk.
  stagecast token mint --key DIR/device-signing.jwk --device D [--member M]
      [--platform P] [--segment S] [--events e1,e2*] [--ttl 1h]
      prints a device token.
`

func runToken(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, tokenUsage)
		return errors.New("token: want keygen or mint")
	}
	switch args[0] {
	case "keygen":
		return tokenKeygen(args[1:])
	case "mint":
		return tokenMint(args[1:])
	}
	fmt.Fprint(os.Stderr, tokenUsage)
	return fmt.Errorf("token: unknown subcommand %q", args[0])
}

func tokenKeygen(args []string) error {
	fs := flag.NewFlagSet("token keygen", flag.ContinueOnError)
	out := fs.String("out", "", "folder for device-signing.jwk and device-keys.jwks (required)")
	kid := fs.String("kid", "", "key id (default: the UTC time, e.g. 20261128T0452Z)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("token keygen: --out is required")
	}
	if *kid == "" {
		*kid = time.Now().UTC().Format("20060102T150405Z")
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	priv, pub, err := devicetoken.Keygen(*kid)
	if err != nil {
		return err
	}
	signing := filepath.Join(*out, "device-signing.jwk")
	if old, err := devicetoken.LoadSigner(signing); err == nil {
		if old.KeyID() == *kid {
			return fmt.Errorf("token keygen: %s already holds kid %q; choose another --kid", signing, *kid)
		}
		if err := os.Rename(signing, filepath.Join(*out, "device-signing."+old.KeyID()+".jwk")); err != nil {
			return err
		}
	}
	jwksPath := filepath.Join(*out, "device-keys.jwks")
	existing, err := os.ReadFile(jwksPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	jwks, err := devicetoken.AddToKeySet(existing, pub)
	if err != nil {
		return fmt.Errorf("token keygen: %s: %w", jwksPath, err)
	}
	pb, err := priv.MarshalJSON()
	if err != nil {
		return err
	}
	if err := os.WriteFile(signing, append(pb, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(jwksPath, append(jwks, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("kid %s\n  private key  %s   (keep it where tokens are minted; never on an edge server)\n  public keys  %s   (give it to proxies and prefetch servers: --device-keys)\n",
		*kid, signing, jwksPath)
	return nil
}

func tokenMint(args []string) error {
	fs := flag.NewFlagSet("token mint", flag.ContinueOnError)
	key := fs.String("key", "", "private signing key (device-signing.jwk) (required)")
	var c devicetoken.Claims
	fs.StringVar(&c.Device, "device", "", "device id: claim sub (required)")
	fs.StringVar(&c.Member, "member", "", "member (account) id: claim mid")
	fs.StringVar(&c.Platform, "platform", "", "platform: claim plt")
	fs.StringVar(&c.Segment, "segment", "", "segment: claim seg")
	events := fs.String("events", "", "comma-separated event patterns the device may subscribe to (an id, or a prefix ending in *): claim evs; empty = any")
	ttl := fs.Duration("ttl", time.Hour, "lifetime: claim exp = now + ttl")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" || c.Device == "" {
		return errors.New("token mint: --key and --device are required")
	}
	if *events != "" {
		c.Events = wire.Patterns(splitAddrs(*events))
	}
	s, err := devicetoken.LoadSigner(*key)
	if err != nil {
		return err
	}
	tok, err := s.Mint(c, *ttl)
	if err != nil {
		return fmt.Errorf("token mint: %w", err)
	}
	fmt.Println(strings.TrimSpace(tok))
	return nil
}
