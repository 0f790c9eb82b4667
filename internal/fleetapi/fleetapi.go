// Package fleetapi is the wire format of a local fleet's control interface
// (make cluster): what internal/localcluster serves and loadgen and the
// stagecast fleet CLI send, so the two sides cannot drift apart. It holds types
// only, like internal/wire for devices.
package fleetapi

// ControlFile is the name of the file, in the fleet's folder, that tells tools
// where the control interface listens and its token.
const ControlFile = "control.json"

// ControlInfo is the content of ControlFile.
type ControlInfo struct {
	Addr  string `json:"addr"`  // host:port on loopback
	Token string `json:"token"` // Authorization: Bearer <token>
}

// Member is one supervised process, as GET /v1/members lists it.
type Member struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"` // redis, broadcaster, proxy, prefetch
	Addr     string `json:"addr"`
	PID      int    `json:"pid"`
	State    string `json:"state"` // running, paused, restarting, stopped
	Restarts int    `json:"restarts"`
	LastExit string `json:"last_exit,omitempty"`
	Role     string `json:"role,omitempty"` // redis: master or replica
	// Ready: the member's /readyz answered 200 (servers only; nil for Redis).
	Ready *bool `json:"ready,omitempty"`
	// Links: the member's network links (make cluster's fault links), with
	// the faults on each now.
	Links []Link `json:"links,omitempty"`
}

// Link is one of a member's network links.
type Link struct {
	Name   string   `json:"name"`   // e.g. proxy-1->redis-7001, devices->proxy-1
	Listen string   `json:"listen"` // what the dialing side dials
	Peer   string   `json:"peer"`   // where it goes
	Faults []string `json:"faults,omitempty"`
}

// Fault is the body of POST /v1/faults.
type Fault struct {
	// Action: one of Actions.
	Action string `json:"action"`
	// Target: "random" (default), or the index among the members the action
	// applies to (proxies, Redis masters; in address order).
	Target string `json:"target,omitempty"`
	// Duration of redis-pause (a Go duration). Default 5s. Of a network
	// fault: healed after it (default: until a heal).
	Duration string `json:"duration,omitempty"`

	// Network faults (NetworkActions) act on links of one member:
	// Member is a member's name (proxy-2, redis-7001) or kind (proxy,
	// broadcaster, prefetch, redis, redis-master: Target picks one, in
	// address order). Default: proxy.
	Member string `json:"member,omitempty"`
	// Link, of a server: "redis" (default: its links to every Redis node),
	// "shard:<i>" (to the i-th Redis master in address order and its
	// replicas), "devices" (the devices' way in), "all" (every link it has).
	// Of a Redis node: "peers" (its replicas' and the other nodes' way to it,
	// replication and cluster bus), "clients" (every server's way to it),
	// "proxies" (the proxies' only), "all".
	Link string `json:"link,omitempty"`
	// Direction, seen from the dialing side: both (default), out, in.
	Direction string `json:"direction,omitempty"`
	// Latency and Jitter of delay (Go durations), RateKBps of bandwidth.
	Latency  string `json:"latency,omitempty"`
	Jitter   string `json:"jitter,omitempty"`
	RateKBps int64  `json:"rate_kbps,omitempty"`
}

// NetworkActions break a member's links (make cluster's embedded toxiproxy):
// partition (drop silently), blackhole (requests arrive, answers do not),
// delay, bandwidth, reset (TCP RST), each for Duration or until heal; heal
// removes every network fault (of Member, when given).
var NetworkActions = []string{"partition", "blackhole", "delay", "bandwidth", "reset", "heal"}

// Actions are the faults a fleet can inject: proxy-kill (SIGKILL), proxy-drain
// (SIGTERM: the proxy drains and exits), redis-master-kill (a Redis master,
// SIGKILL: its replica is promoted), redis-pause (a Redis master stopped for
// Duration), broadcaster-kill.
var Actions = []string{"proxy-kill", "proxy-drain", "redis-master-kill", "redis-pause", "broadcaster-kill"}

// FaultResult says what a fault did.
type FaultResult struct {
	Action string `json:"action"`
	Member string `json:"member"`
	AtMS   int64  `json:"at_ms"`
	// Links a network fault acts on, and when it heals by itself (0: at heal).
	Links    []string `json:"links,omitempty"`
	HealAtMS int64    `json:"heal_at_ms,omitempty"`
}
