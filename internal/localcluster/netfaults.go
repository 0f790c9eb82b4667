package localcluster

import (
	"cmp"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stagecast/stagecast/internal/fleetapi"
	"github.com/stagecast/stagecast/internal/netfault"
)

// networkFault applies a network fault (fleetapi.NetworkActions) to the
// links of one member, healing it after f.Duration when one is given.
func (c *control) networkFault(f Fault) (FaultResult, error) {
	if f.Action == "heal" {
		return c.heal(f)
	}
	nf := netfault.Fault{Kind: f.Action, Direction: f.Direction, RateKBps: f.RateKBps}
	var err error
	if nf.Latency, err = optDuration("latency", f.Latency); err != nil {
		return FaultResult{}, err
	}
	if nf.Jitter, err = optDuration("jitter", f.Jitter); err != nil {
		return FaultResult{}, err
	}
	if err := nf.Validate(); err != nil {
		return FaultResult{}, err
	}
	d, err := optDuration("duration", f.Duration)
	if err != nil {
		return FaultResult{}, err
	}
	m, err := c.pickMember(f)
	if err != nil {
		return FaultResult{}, err
	}
	ls, err := c.linksOf(m, f.Link)
	if err != nil {
		return FaultResult{}, err
	}
	res := FaultResult{Action: f.Action, Member: m.name, AtMS: time.Now().UnixMilli()}
	for _, l := range ls {
		if err := l.Apply(nf); err != nil {
			for _, done := range ls {
				done.Heal()
			}
			return FaultResult{}, err
		}
		res.Links = append(res.Links, l.Name)
	}
	if d > 0 {
		res.HealAtMS = res.AtMS + d.Milliseconds()
		go func() {
			select {
			case <-time.After(d):
			case <-c.ctx.Done():
				return
			}
			for _, l := range ls {
				l.Heal()
			}
			fmt.Fprintf(c.out, "%s  control: healed %s on %s\n", time.Now().Format("15:04:05"), f.Action, m.name)
		}()
	}
	fmt.Fprintf(c.out, "%s  control: %s on %s (%s)\n", time.Now().Format("15:04:05"), f.Action, m.name, strings.Join(res.Links, ", "))
	return res, nil
}

// heal removes every network fault, of f.Member's links when it names one.
func (c *control) heal(f Fault) (FaultResult, error) {
	res := FaultResult{Action: "heal", Member: f.Member, AtMS: time.Now().UnixMilli()}
	for _, m := range c.members {
		if f.Member != "" && m.name != f.Member && m.kind != f.Member {
			continue
		}
		for _, ml := range m.links {
			if len(ml.link.Faults()) > 0 {
				ml.link.Heal()
				res.Links = append(res.Links, ml.link.Name)
			}
		}
	}
	fmt.Fprintf(c.out, "%s  control: heal (%d links)\n", time.Now().Format("15:04:05"), len(res.Links))
	return res, nil
}

func optDuration(name, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 10*time.Minute {
		return 0, fmt.Errorf("%s %q: a duration up to 10m", name, v)
	}
	return d, nil
}

// pickMember resolves f.Member (a name, or a kind with f.Target) to a
// running member with links.
func (c *control) pickMember(f Fault) (*member, error) {
	want := f.Member
	if want == "" {
		want = "proxy"
	}
	var candidates []*member
	for _, m := range c.members {
		if m.name == want {
			if len(m.links) == 0 {
				return nil, fmt.Errorf("%s has no network links (start the fleet with links: make cluster does)", m.name)
			}
			return m, nil
		}
		switch {
		case len(m.links) == 0:
		case m.kind == want,
			want == "redis-master" && m.kind == "redis" && m.status().State == "running" && redisRole(m.addr) == "master":
			candidates = append(candidates, m)
		}
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("member %q: no such member or kind with network links (broadcaster, proxy, prefetch, redis, redis-master, or a name from list)", want)
	}
	sort.Slice(candidates, func(i, j int) bool { return candidates[i].addr < candidates[j].addr })
	switch f.Target {
	case "", "random":
		return candidates[mrand.IntN(len(candidates))], nil
	}
	i, err := strconv.Atoi(f.Target)
	if err != nil || i < 0 || i >= len(candidates) {
		return nil, fmt.Errorf("target %q: \"random\" or an index below %d", f.Target, len(candidates))
	}
	return candidates[i], nil
}

// linksOf is m's links that which names: redis (default), shard:<i>,
// devices or all.
func (c *control) linksOf(m *member, which string) ([]*netfault.Link, error) {
	if m.kind == "redis" {
		return c.redisLinks(m, which)
	}
	var peers []string // Redis nodes, for shard:<i>
	switch {
	case which == "" || which == "redis" || which == "devices" || which == "all":
	case strings.HasPrefix(which, "shard:"):
		i, err := strconv.Atoi(strings.TrimPrefix(which, "shard:"))
		masters := c.redisMasters()
		if err != nil || i < 0 || i >= len(masters) {
			return nil, fmt.Errorf("link %q: shard:<i> with i below the %d masters", which, len(masters))
		}
		peers = append([]string{masters[i]}, c.replicasOf(masters[i])...)
	default:
		return nil, fmt.Errorf("link %q: redis, shard:<i>, devices or all", which)
	}
	var out []*netfault.Link
	for _, ml := range m.links {
		switch {
		case which == "all",
			(which == "" || which == "redis") && ml.kind == "redis",
			which == "devices" && ml.kind == "devices",
			peers != nil && ml.kind == "redis" && slices.Contains(peers, ml.peer):
			out = append(out, ml.link)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no %s link", m.name, cmp.Or(which, "redis"))
	}
	return out, nil
}

// redisMasters lists the running Redis masters' addresses, in address order.
func (c *control) redisMasters() []string {
	var out []string
	for _, m := range c.members {
		if m.kind == "redis" && m.status().State == "running" && redisRole(m.addr) == "master" {
			out = append(out, m.addr)
		}
	}
	sort.Strings(out)
	return out
}

// redisLinks is the links that which names around Redis node m: peers (its
// replicas' and the other nodes' way to it: client port and cluster bus),
// clients (every server's way to it), proxies (the proxies' only), all.
func (c *control) redisLinks(m *member, which string) ([]*netfault.Link, error) {
	var out []*netfault.Link
	if which == "peers" || which == "all" {
		for _, ml := range m.links {
			out = append(out, ml.link)
		}
	}
	if which == "clients" || which == "proxies" || which == "all" {
		for _, o := range c.members {
			if which == "proxies" && o.kind != "proxy" {
				continue
			}
			for _, ml := range o.links {
				if ml.kind == "redis" && ml.peer == m.addr {
					out = append(out, ml.link)
				}
			}
		}
	}
	if which != "peers" && which != "clients" && which != "proxies" && which != "all" {
		return nil, fmt.Errorf("link %q of Redis node %s: peers, clients, proxies or all", which, m.name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no %s link", m.name, which)
	}
	return out, nil
}

// replicasOf lists the replicas of the master at addr by their real
// addresses (replicas report the address they announce).
func (c *control) replicasOf(addr string) []string {
	var out []string
	for _, a := range replicasOf(addr) {
		out = append(out, c.realAddr(a))
	}
	return out
}

// realAddr is the address of the Redis node that announces a (a relay in
// front of it, with links), or a itself.
func (c *control) realAddr(a string) string {
	for _, m := range c.members {
		for _, ml := range m.links {
			if ml.kind == "peers" && ml.link.Listen == a {
				return m.addr
			}
		}
	}
	return a
}

// replicasOf lists the replicas connected to the master at addr (INFO
// replication: slave<i>:ip=...,port=...).
func replicasOf(addr string) []string {
	_, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "-p", port, "INFO", "replication").Output()
	if err != nil {
		return nil
	}
	var rs []string
	for _, line := range strings.Split(string(out), "\n") {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "slave") || strings.HasPrefix(name, "slave_") {
			continue
		}
		var ip, p string
		for _, kv := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "ip":
				ip = v
			case "port":
				p = v
			}
		}
		if ip != "" && p != "" {
			rs = append(rs, ip+":"+p)
		}
	}
	return rs
}

// withReadiness adds each server's /readyz to its status.
func withReadiness(s fleetapi.Member) fleetapi.Member {
	if s.Kind == "redis" || s.State != "running" {
		return s
	}
	ok := httpOK("http://" + s.Addr + "/readyz")
	s.Ready = &ok
	return s
}
