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
}

// Fault is the body of POST /v1/faults.
type Fault struct {
	// Action: one of Actions.
	Action string `json:"action"`
	// Target: "random" (default), or the index among the members the action
	// applies to (proxies, Redis masters; in address order).
	Target string `json:"target,omitempty"`
	// Duration of redis-pause (a Go duration). Default 5s.
	Duration string `json:"duration,omitempty"`
}

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
}
