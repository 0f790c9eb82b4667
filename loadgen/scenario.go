package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/fleetapi"
	"github.com/stagecast/stagecast/internal/wire"
)

// Duration is a time.Duration written as "90s", "30m", "2h30m".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration like \"90s\" or \"2h30m\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use 90s, 30m, 2h30m)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Scenario is a game day's timeline.
type Scenario struct {
	Name     string   `yaml:"name"`
	Event    string   `yaml:"event"`
	Duration Duration `yaml:"duration"`
	// Devices is the population (override with --devices).
	Devices   int64              `yaml:"devices"`
	Platforms map[string]float64 `yaml:"platforms"`
	Segments  map[string]float64 `yaml:"segments"`
	// DevicesPerMember spreads the devices over members (accounts) for their
	// device tokens: device i belongs to member i / DevicesPerMember. Default 2.
	DevicesPerMember float64   `yaml:"devices_per_member"`
	Connect          Connect   `yaml:"connect"`
	Prefetch         Prefetch  `yaml:"prefetch"`
	Stages           []StageAt `yaml:"stages"`
	Drops            []Drop    `yaml:"drops"`
	Faults           []Fault   `yaml:"faults"`
	Fleet            Fleet     `yaml:"fleet"`
	Network          Network   `yaml:"network"`

	lines map[string]int // field path -> line, for errors
}

// Connect is the arrival model: devices arrive at a rate ramping linearly from
// 0 at Start to its peak over Ramp (open model: a rate, not a pool).
type Connect struct {
	Start Duration `yaml:"start"`
	Ramp  Duration `yaml:"ramp"`
}

// Prefetch is the prefetch timing: TTL ~ TTL x U(1-Jitter, 1+Jitter), refresh
// after ttl x U(RefreshLo, RefreshHi). NoJitter (or --no-jitter) makes both exact.
type Prefetch struct {
	TTL       Duration `yaml:"ttl"`
	Jitter    float64  `yaml:"jitter"`
	RefreshLo float64  `yaml:"refresh_lo"`
	RefreshHi float64  `yaml:"refresh_hi"`
	NoJitter  bool     `yaml:"no_jitter"`
	// A stage marked changed makes every device refetch in its hashed slot
	// (wire.RefetchDelay) over RefetchWindow split in RefetchSlots. Defaults
	// 30s and 300, as the device client.
	RefetchWindow Duration `yaml:"refetch_window"`
	RefetchSlots  int      `yaml:"refetch_slots"`
}

// StageAt is a stage change at an offset.
type StageAt struct {
	At    Duration `yaml:"at"`
	Stage string   `yaml:"stage"`
	// Changed: the stage's payload changed after devices prefetched it (or the
	// key is not in their map): the frame's digest differs from what they hold
	// and each refetches in its slot.
	Changed bool `yaml:"changed"`
	// Paced: the change is released by proxies in waves (live runs send
	// "paced": true with it).
	Paced bool `yaml:"paced"`
}

// Drop disconnects a fraction of the connected devices at an offset; they
// reconnect with full-jitter backoff (attempt k waits U(0, min(cap, base*2^k))).
type Drop struct {
	At          Duration `yaml:"at"`
	Fraction    float64  `yaml:"fraction"`
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffCap  Duration `yaml:"backoff_cap"`
}

// Fault is an injected failure at scenario time At. A live run injects it
// through a fleet's control interface (--fleet); the simulator models it.
type Fault struct {
	At Duration `yaml:"at"`
	// Action: proxy-kill, proxy-drain, redis-master-kill, redis-pause,
	// broadcaster-kill; or a network fault (the fleet's links, make cluster):
	// partition, blackhole, delay, bandwidth, reset, heal.
	Action string `yaml:"action"`
	// Target: "random" (default) or the index of the member among those the
	// action applies to (proxies, Redis masters; of a network fault, the
	// members of kind Member).
	Target string `yaml:"target"`
	// Duration of redis-pause (default 5s), in real time. Of a network fault:
	// it heals after this long, in real time (default: at a later heal).
	Duration Duration `yaml:"duration"`
	// Network faults: Member, a name (proxy-2) or kind (proxy, the default;
	// broadcaster; prefetch); Link, redis (default), shard:<i>, devices or
	// all; Direction, both (default), out or in; Latency and Jitter of
	// delay; RateKBps of bandwidth.
	Member    string   `yaml:"member"`
	Link      string   `yaml:"link"`
	Direction string   `yaml:"direction"`
	Latency   Duration `yaml:"latency"`
	Jitter    Duration `yaml:"jitter"`
	RateKBps  int64    `yaml:"rate_kbps"`
	// DrainProxy is the older spelling of action: proxy-drain.
	DrainProxy bool `yaml:"drain_proxy"`
	// Window is the drain window the simulator assumes (default 30s; make
	// cluster's proxies drain over 3s).
	Window Duration `yaml:"window"`
	// The devices' reconnect backoff the simulator assumes (defaults 500ms, 30s,
	// the reference device's).
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffCap  Duration `yaml:"backoff_cap"`
}

// FaultActions are the faults a scenario may name: a process's
// (fleetapi.Actions) or a link's (fleetapi.NetworkActions).
var FaultActions = append(slices.Clone(fleetapi.Actions), fleetapi.NetworkActions...)

// network reports whether f breaks links rather than processes.
func (f Fault) network() bool { return slices.Contains(fleetapi.NetworkActions, f.Action) }

// request is f as the fleet's control interface takes it.
func (f Fault) request() fleetapi.Fault {
	r := fleetapi.Fault{Action: f.Action, Target: f.Target, Member: f.Member, Link: f.Link, Direction: f.Direction, RateKBps: f.RateKBps}
	if f.Duration > 0 {
		r.Duration = f.Duration.D().String()
	}
	if f.Latency > 0 {
		r.Latency = f.Latency.D().String()
	}
	if f.Jitter > 0 {
		r.Jitter = f.Jitter.D().String()
	}
	return r
}

// Fleet is the serving side the simulation models.
type Fleet struct {
	Proxies int `yaml:"proxies"`
	// Capacity: devices per proxy. FanoutRate: deliveries per second per proxy.
	Capacity   int64   `yaml:"capacity"`
	FanoutRate float64 `yaml:"fanout_rate"`
	// AdmitRate and AdmitBurst: new connections per second (and burst) one
	// proxy admits (its --admit-rate, --admit-burst). Defaults 2000, 2000.
	AdmitRate  float64 `yaml:"admit_rate"`
	AdmitBurst float64 `yaml:"admit_burst"`
	// RetryAfter: the base of the Retry-After a proxy sends with a refused
	// upgrade, U(base, 2 x base) (its --retry-after). Default 5s.
	RetryAfter Duration `yaml:"retry_after"`
	// DirectedDrain: proxies have --public-url, so a drain directs devices to
	// the survivors, paced under 80 % of their admission over the window
	// (make cluster's fleets do). Else devices are told at U(0, window) and
	// wait U(0, 2 s).
	DirectedDrain bool `yaml:"directed_drain"`
}

// Network is the delay model: publish hop, and the device's last-mile delay,
// log-normal with this median and 99th percentile.
type Network struct {
	PubSub      Duration `yaml:"pubsub"`
	DeviceP50   Duration `yaml:"device_p50"`
	DeviceP99   Duration `yaml:"device_p99"`
	LossPercent float64  `yaml:"loss_percent"`
}

// LoadScenario reads and validates a scenario file.
func LoadScenario(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sc, err := ParseScenario(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// ParseScenario decodes YAML or JSON; errors name the line and the field.
func ParseScenario(b []byte) (*Scenario, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	sc := &Scenario{}
	if err := dec.Decode(sc); err != nil {
		return nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))
	}
	sc.lines = map[string]int{}
	if len(root.Content) > 0 {
		indexLines(root.Content[0], "", sc.lines)
	}
	sc.defaults()
	if err := sc.validate(); err != nil {
		return nil, err
	}
	return sc, nil
}

func indexLines(n *yaml.Node, path string, out map[string]int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			out[p] = n.Content[i].Line
			indexLines(n.Content[i+1], p, out)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			out[p] = c.Line
			indexLines(c, p, out)
		}
	}
}

// fieldErr names the line of field (or of the closest enclosing one).
func (sc *Scenario) fieldErr(field, format string, args ...any) error {
	p := field
	for {
		if line, ok := sc.lines[p]; ok {
			return fmt.Errorf("line %d: %s: %s", line, field, fmt.Sprintf(format, args...))
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...))
		}
		p = p[:i]
	}
}

// DefaultScenario holds the documented defaults of a scenario's fields
// (docs/loadgen.md); a scenario file's zero fields take them (package
// defaults, section by section). Fleet's admission defaults are the proxy's;
// a negative value is refused by validate, never taken as the default.
func DefaultScenario() Scenario {
	return Scenario{
		Event:            "rehearsal",
		DevicesPerMember: 2,
		Prefetch:         Prefetch{TTL: Duration(300 * time.Second), Jitter: 0.5, RefetchWindow: Duration(30 * time.Second), RefetchSlots: 300, RefreshLo: 0.5, RefreshHi: 0.9},
		Fleet:            Fleet{AdmitRate: 2000, AdmitBurst: 2000, Capacity: 200000, FanoutRate: 87000, RetryAfter: Duration(5 * time.Second)},
		Network:          Network{PubSub: Duration(time.Millisecond), DeviceP50: Duration(40 * time.Millisecond), DeviceP99: Duration(200 * time.Millisecond)},
	}
}

// defaultDrop and defaultFault are each drop's and fault's defaults.
var (
	defaultDrop  = Drop{BackoffBase: Duration(500 * time.Millisecond), BackoffCap: Duration(30 * time.Second)}
	defaultFault = Fault{Window: Duration(30 * time.Second), Target: "random", BackoffBase: Duration(500 * time.Millisecond), BackoffCap: Duration(30 * time.Second)}
)

// defaults fills the zero fields from DefaultScenario. Two rules are not a
// field's zero: RefreshLo and RefreshHi are a pair (both zero take the
// defaults), and no_jitter keeps Jitter at 0.
func (sc *Scenario) defaults() {
	def := DefaultScenario()
	if sc.Event == "" {
		sc.Event = def.Event
	}
	if sc.DevicesPerMember == 0 {
		sc.DevicesPerMember = def.DevicesPerMember
	}
	lo, hi, jitter := sc.Prefetch.RefreshLo, sc.Prefetch.RefreshHi, sc.Prefetch.Jitter
	defaults.Fill(&sc.Prefetch, def.Prefetch)
	if lo != 0 || hi != 0 {
		sc.Prefetch.RefreshLo, sc.Prefetch.RefreshHi = lo, hi
	}
	if sc.Prefetch.NoJitter {
		sc.Prefetch.Jitter = jitter // no_jitter: a jitter left at 0 stays 0
	}
	defaults.Fill(&sc.Fleet, def.Fleet)
	defaults.Fill(&sc.Network, def.Network)
	for i := range sc.Drops {
		defaults.Fill(&sc.Drops[i], defaultDrop)
	}
	for i := range sc.Faults {
		f := &sc.Faults[i]
		if f.DrainProxy && f.Action == "" {
			f.Action = "proxy-drain"
		}
		defaults.Fill(f, defaultFault)
		if f.Action == "redis-pause" && f.Duration == 0 {
			f.Duration = Duration(5 * time.Second)
		}
	}
	sort.SliceStable(sc.Stages, func(i, j int) bool { return sc.Stages[i].At < sc.Stages[j].At })
}

func (sc *Scenario) validate() error {
	var errs []error
	if sc.Duration <= 0 {
		errs = append(errs, sc.fieldErr("duration", "must be > 0"))
	}
	if sc.Devices <= 0 {
		errs = append(errs, sc.fieldErr("devices", "must be > 0"))
	}
	if !wire.ValidID(sc.Event) {
		errs = append(errs, sc.fieldErr("event", "%v", wire.CheckID("event", sc.Event)))
	}
	for name, mix := range map[string]map[string]float64{"platforms": sc.Platforms, "segments": sc.Segments} {
		sum := 0.0
		for k, v := range mix {
			if !wire.ValidID(k) {
				errs = append(errs, sc.fieldErr(name+"."+k, "not a valid id"))
			}
			if v < 0 {
				errs = append(errs, sc.fieldErr(name+"."+k, "share %v < 0", v))
			}
			sum += v
		}
		if len(mix) > 0 && (sum < 0.999 || sum > 1.001) {
			errs = append(errs, sc.fieldErr(name, "shares add up to %.3f, want 1", sum))
		}
	}
	if sc.Connect.Start+sc.Connect.Ramp > sc.Duration {
		errs = append(errs, sc.fieldErr("connect.ramp", "connect start + ramp (%v) runs past the duration (%v)", (sc.Connect.Start+sc.Connect.Ramp).D(), sc.Duration.D()))
	}
	if p := sc.Prefetch; p.Jitter < 0 || p.Jitter >= 1 {
		errs = append(errs, sc.fieldErr("prefetch.jitter", "%v outside [0, 1)", p.Jitter))
	}
	if sc.DevicesPerMember < 1 {
		errs = append(errs, sc.fieldErr("devices_per_member", "%v: at least 1", sc.DevicesPerMember))
	}
	if p := sc.Prefetch; p.RefetchWindow < 0 || p.RefetchSlots < 0 || p.TTL < 0 {
		errs = append(errs, sc.fieldErr("prefetch", "ttl %v, refetch_window %v and refetch_slots %d must be > 0 (0: the default)", p.TTL, p.RefetchWindow, p.RefetchSlots))
	}
	if p := sc.Prefetch; p.RefreshLo <= 0 || p.RefreshHi > 1 || p.RefreshLo > p.RefreshHi {
		errs = append(errs, sc.fieldErr("prefetch.refresh_lo", "refresh range [%v, %v] must lie in (0, 1]", p.RefreshLo, p.RefreshHi))
	}
	if sc.Prefetch.TTL < Duration(time.Second) {
		errs = append(errs, sc.fieldErr("prefetch.ttl", "at least 1s"))
	}
	if len(sc.Stages) == 0 {
		errs = append(errs, sc.fieldErr("stages", "at least one stage change"))
	}
	for i, s := range sc.Stages {
		f := fmt.Sprintf("stages[%d]", i)
		if !wire.ValidID(s.Stage) {
			errs = append(errs, sc.fieldErr(f+".stage", "%q is not a valid stage id", s.Stage))
		}
		if s.At < 0 || s.At > sc.Duration {
			errs = append(errs, sc.fieldErr(f+".at", "%v outside the scenario (0..%v)", s.At.D(), sc.Duration.D()))
		}
	}
	for i, d := range sc.Drops {
		f := fmt.Sprintf("drops[%d]", i)
		if d.Fraction <= 0 || d.Fraction > 1 {
			errs = append(errs, sc.fieldErr(f+".fraction", "%v outside (0, 1]", d.Fraction))
		}
		if d.At < 0 || d.At > sc.Duration {
			errs = append(errs, sc.fieldErr(f+".at", "outside the scenario"))
		}
		if d.BackoffBase <= 0 || d.BackoffCap < d.BackoffBase {
			errs = append(errs, sc.fieldErr(f+".backoff_cap", "need 0 < backoff_base <= backoff_cap"))
		}
	}
	for i, ft := range sc.Faults {
		f := fmt.Sprintf("faults[%d]", i)
		if !slices.Contains(FaultActions, ft.Action) {
			errs = append(errs, sc.fieldErr(f+".action", "%q is not one of %s", ft.Action, strings.Join(FaultActions, ", ")))
		}
		if _, err := strconv.Atoi(ft.Target); ft.Target != "random" && (err != nil || strings.HasPrefix(ft.Target, "-")) {
			errs = append(errs, sc.fieldErr(f+".target", "\"random\" or an index >= 0"))
		}
		if ft.At < 0 || ft.At > sc.Duration {
			errs = append(errs, sc.fieldErr(f+".at", "outside the scenario"))
		}
		if !ft.network() && (ft.Member != "" || ft.Link != "" || ft.Direction != "" || ft.Latency != 0 || ft.Jitter != 0 || ft.RateKBps != 0) {
			errs = append(errs, sc.fieldErr(f, "member, link, direction, latency, jitter and rate_kbps are for network faults (%s)", strings.Join(fleetapi.NetworkActions, ", ")))
		}
		if ft.network() && ft.Action != "heal" {
			switch {
			case ft.Direction != "" && ft.Direction != "both" && ft.Direction != "out" && ft.Direction != "in":
				errs = append(errs, sc.fieldErr(f+".direction", "both, out or in"))
			case ft.Action == "delay" && (ft.Latency <= 0 || ft.Jitter < 0 || ft.Jitter > ft.Latency || ft.Latency.D() > time.Minute):
				errs = append(errs, sc.fieldErr(f+".latency", "delay needs 0 < latency <= 1m and 0 <= jitter <= latency"))
			case ft.Action == "bandwidth" && ft.RateKBps <= 0:
				errs = append(errs, sc.fieldErr(f+".rate_kbps", "bandwidth needs a rate > 0 KB/s"))
			}
			if l := ft.Link; l != "" && !slices.Contains([]string{"redis", "devices", "all", "peers", "clients", "proxies"}, l) && !strings.HasPrefix(l, "shard:") {
				errs = append(errs, sc.fieldErr(f+".link", "redis, shard:<i>, devices or all (a server's); peers, clients, proxies or all (a Redis node's)"))
			}
			if ft.Duration < 0 || ft.Duration.D() > 10*time.Minute {
				errs = append(errs, sc.fieldErr(f+".duration", "up to 10m"))
			}
		}
	}
	if sc.Fleet.Proxies < 0 || sc.Fleet.Capacity <= 0 || sc.Fleet.FanoutRate <= 0 {
		errs = append(errs, sc.fieldErr("fleet", "proxies >= 0, capacity > 0 and fanout_rate > 0"))
	}
	if sc.Network.DeviceP99 < sc.Network.DeviceP50 {
		errs = append(errs, sc.fieldErr("network.device_p99", "below device_p50"))
	}
	if sc.Network.LossPercent < 0 || sc.Network.LossPercent >= 100 {
		errs = append(errs, sc.fieldErr("network.loss_percent", "outside [0, 100)"))
	}
	return errors.Join(errs...)
}
