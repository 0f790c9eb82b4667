// Package stagecast is the Go device SDK: what a Go program that plays a
// device (a set-top box's agent, a test rig, a monitoring probe) uses to
// follow live events, the Go counterpart of the TypeScript SDK (sdk/js). It
// does both phases: it prefetches each event's stage map through the GraphQL
// API (refreshing it when the server's jittered hint says) and holds one
// WebSocket to a proxy; when the producer changes the stage it looks the key
// up in the map it holds and hands you the payload. No request at the peak.
//
// Reconnects (full-jitter backoff, catch-up by version, drain hints and
// directed drains), payload digests refetched in the device's own slot and
// the notification resume cursor behave as the TypeScript SDK's: both are
// pinned by the shared vectors in sdk/testdata/vectors.json. The package's
// API names only its own types and the standard library's.
//
// Concurrency: a Client is safe for concurrent use; OnStage, OnNote and
// OnConnect are called from the client's goroutines, one at a time per kind,
// and must not block for long.
package stagecast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/wire"
)

// Config configures a Client.
type Config struct {
	// Proxies are the proxies' WebSocket endpoints (ws[s]://host/v1/ws), in
	// order of preference; reconnects rotate through them. Required.
	Proxies []string
	// GraphQL is the prefetch API (http[s]://host/graphql). Required.
	GraphQL string
	// Events to follow. Required.
	Events []string
	// Device, Platform and Segment describe the device (a device token's
	// claims override them on the proxy).
	Device, Platform, Segment string
	// Token is the device token (a JWT from your backend): sent on the
	// upgrade and with each prefetch; it makes the prefetches critical for
	// the server and gives the connection its inboxes.
	Token string
	// Notes resumes the token's inboxes on every connection and acks each
	// note (OnNote is called once per note).
	Notes bool
	// HTTPClient makes the prefetches and dials the proxies. Default
	// http.DefaultClient.
	HTTPClient *http.Client
	// OnStage is called for each stage change that raised an event's
	// version: on a broadcast, and on a (re)connect that caught up.
	OnStage func(Stage)
	// OnNote is called once per notification.
	OnNote func(Note)
	// OnConnect is called each time a connection is established.
	OnConnect func()
}

// Stage is an event's stage as the device holds it.
type Stage struct {
	Event string
	Key   string
	V     uint64    // the version: higher is newer
	TS    time.Time // when the producer made the change
	// Payload is the stage's payload from the prefetched map (nil when the
	// map does not hold the key yet: the SDK fetches it in the device's slot
	// and Stage returns it once held). Held reports which.
	Payload json.RawMessage
	Held    bool
}

// Note is a notification.
type Note struct {
	// Cursor is the note's place in its inbox (the device resumes after it).
	Cursor   string
	ID       string // the notification's id
	Type     string
	Priority string
	Payload  json.RawMessage
	TS       time.Time
}

// Client is one device following some events.
type Client struct {
	cfg  Config
	dev  *device.Client
	pfs  map[string]*device.Prefetcher
	mu   sync.Mutex
	held map[string]Stage
	run  context.Context // set by Run: the prefetchers' context for digest refetches
}

// New checks cfg and returns a Client; Run connects it.
func New(cfg Config) (*Client, error) {
	switch {
	case len(cfg.Proxies) == 0:
		return nil, errors.New("stagecast: Config.Proxies is empty")
	case cfg.GraphQL == "":
		return nil, errors.New("stagecast: Config.GraphQL is empty")
	case len(cfg.Events) == 0:
		return nil, errors.New("stagecast: Config.Events is empty")
	}
	c := &Client{cfg: cfg, pfs: map[string]*device.Prefetcher{}, held: map[string]Stage{}, run: context.Background()}
	events := map[string]uint64{}
	for _, ev := range cfg.Events {
		if err := wire.CheckID("event", ev); err != nil {
			return nil, fmt.Errorf("stagecast: %w", err)
		}
		pf, err := device.NewPrefetcher(device.PrefetchConfig{URL: cfg.GraphQL, Event: ev, Segment: cfg.Segment, Critical: cfg.Token != "",
			Token: cfg.Token, HTTPClient: cfg.HTTPClient, DeviceID: cfg.Device})
		if err != nil {
			return nil, fmt.Errorf("stagecast: %w", err)
		}
		c.pfs[ev] = pf
		events[ev] = 0
	}
	dev, err := device.New(device.Config{URLs: cfg.Proxies, Device: cfg.Device, Platform: cfg.Platform, Segment: cfg.Segment,
		Token: cfg.Token, Events: events, Ack: true, HTTPClient: cfg.HTTPClient, Notes: cfg.Notes, AckNotes: cfg.Notes,
		OnConnect: cfg.OnConnect, OnStage: c.onStage, OnNote: c.onNote})
	if err != nil {
		return nil, fmt.Errorf("stagecast: %w", err)
	}
	c.dev = dev
	return c, nil
}

func (c *Client) onStage(f wire.ProxyFrame, _ time.Time) {
	st := Stage{Event: f.Event, Key: f.Key, V: f.V, TS: time.UnixMilli(f.TS)}
	if pf := c.pfs[f.Event]; pf != nil {
		c.mu.Lock()
		ctx := c.run
		c.mu.Unlock()
		st.Payload, st.Held, _ = pf.OnStageDigest(ctx, f.Key, f.D)
	}
	c.mu.Lock()
	c.held[f.Event] = st
	c.mu.Unlock()
	if c.cfg.OnStage != nil {
		c.cfg.OnStage(st)
	}
}

func (c *Client) onNote(f wire.ProxyFrame, _ time.Time) {
	if c.cfg.OnNote != nil {
		c.cfg.OnNote(Note{Cursor: f.ID, ID: f.NID, Type: f.Type, Priority: f.Priority, Payload: f.Payload, TS: time.UnixMilli(f.TS)})
	}
}

// Run prefetches the events' maps and keeps the device connected until ctx
// ends; it returns ctx's error, or an error the device cannot recover from
// (its token refused).
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	c.run = ctx
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, pf := range c.pfs {
		wg.Add(1)
		go func() { defer wg.Done(); _ = pf.Run(ctx) }()
	}
	err := c.dev.Run(ctx)
	wg.Wait()
	return err
}

// Stage returns event's stage as held, with its payload from the prefetched
// map as it is now (false: no stage received yet).
func (c *Client) Stage(event string) (Stage, bool) {
	c.mu.Lock()
	st, ok := c.held[event]
	c.mu.Unlock()
	if ok && !st.Held {
		if pf := c.pfs[event]; pf != nil {
			st.Payload, st.Held = pf.Lookup(st.Key)
		}
	}
	return st, ok
}

// Payload returns the payload the prefetched map of event holds for key.
func (c *Client) Payload(event, key string) (json.RawMessage, bool) {
	pf := c.pfs[event]
	if pf == nil {
		return nil, false
	}
	return pf.Lookup(key)
}

// Connected reports whether the device is connected now.
func (c *Client) Connected() bool { return c.dev.Connected() }
