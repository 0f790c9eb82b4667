package redistest

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a real Redis Cluster of redis-server processes on loopback.
type Cluster struct {
	t     testing.TB
	Nodes []*Server
}

// StartCluster starts masters x (1 + replicas) cluster-enabled nodes, creates the
// cluster with redis-cli --cluster create, and waits until every node reports
// cluster_state:ok. Nodes are stopped in t.Cleanup. cluster-node-timeout is 1 s.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	return StartClusterTimeout(t, masters, replicas, time.Second)
}

// StartClusterTimeout is StartCluster with cluster-node-timeout set (the time
// before a silent master is failed over).
func StartClusterTimeout(t testing.TB, masters, replicas int, nodeTimeout time.Duration) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli not found: run `make test`, which installs redis-tools: %v", err)
	}
	c := &Cluster{t: t}
	n := masters * (1 + replicas)
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, Start(t, Options{Args: []string{"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", strconv.FormatInt(nodeTimeout.Milliseconds(), 10), "--appendonly", "yes",
			"--cluster-replica-validity-factor", "0"}}))
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK(30 * time.Second)
	return c
}

// Addrs returns every node's address.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, s := range c.Nodes {
		if s.alive() {
			out = append(out, s.Addr())
		}
	}
	return out
}

func (s *Server) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// WaitOK waits until every live node reports cluster_state:ok and all 16384
// slots are served.
func (c *Cluster) WaitOK(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		for _, s := range c.Nodes {
			if !s.alive() {
				continue
			}
			out, err := s.Cli(context.Background(), "CLUSTER", "INFO")
			if err != nil || !strings.Contains(out, "cluster_state:ok") || !strings.Contains(out, "cluster_slots_ok:16384") {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("redis cluster not ok after %v", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MasterFor returns the node serving key's slot as master.
func (c *Cluster) MasterFor(key string) *Server {
	c.t.Helper()
	for _, s := range c.Nodes {
		if !s.alive() {
			continue
		}
		slotOut, err := s.Cli(context.Background(), "CLUSTER", "KEYSLOT", key)
		if err != nil {
			continue
		}
		slot, _ := strconv.Atoi(strings.TrimSpace(slotOut))
		nodes, err := s.Cli(context.Background(), "CLUSTER", "NODES")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(nodes, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, found := strings.Cut(r, "-")
				if !found {
					hi = lo
				}
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil && slot >= a && slot <= b {
					addr := strings.Split(f[1], "@")[0]
					for _, n := range c.Nodes {
						if n.Addr() == addr {
							return n
						}
					}
				}
			}
		}
	}
	c.t.Fatalf("no master found for %q", key)
	return nil
}

func (s *Server) cli(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.Cli(context.Background(), args...)
	if err != nil {
		t.Fatalf("redis-cli -p %d %v: %v %s", s.Port, args, err, out)
	}
	return strings.TrimSpace(out)
}

// MoveSlot migrates the slot of key, with its keys, from its master to master
// `to`, the way a resharding does: IMPORTING/MIGRATING, MIGRATE every key, then
// SETSLOT NODE on every master.
func (c *Cluster) MoveSlot(key string, to *Server) {
	c.t.Helper()
	from := c.MasterFor(key)
	if from == to {
		c.t.Fatalf("MoveSlot: %s already serves %q", to.Addr(), key)
	}
	slot := from.cli(c.t, "CLUSTER", "KEYSLOT", key)
	fromID, toID := from.cli(c.t, "CLUSTER", "MYID"), to.cli(c.t, "CLUSTER", "MYID")
	to.cli(c.t, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	from.cli(c.t, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	for {
		keys := strings.Fields(from.cli(c.t, "CLUSTER", "GETKEYSINSLOT", slot, "100"))
		if len(keys) == 0 {
			break
		}
		args := append([]string{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "5000", "KEYS"}, keys...)
		from.cli(c.t, args...)
	}
	for _, n := range c.Nodes {
		if n.alive() {
			n.cli(c.t, "CLUSTER", "SETSLOT", slot, "NODE", toID)
		}
	}
}

// ReplicaOf returns a replica of master (nil if it has none).
func (c *Cluster) ReplicaOf(master *Server) *Server {
	port := strconv.Itoa(master.Port)
	for _, n := range c.Nodes {
		if n == master {
			continue
		}
		out, err := n.Cli(context.Background(), "ROLE")
		if err == nil && strings.HasPrefix(out, "slave") && strings.Contains(out, "\n"+port+"\n") {
			return n
		}
	}
	return nil
}
