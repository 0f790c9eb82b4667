package fanoutbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/benchproc"
	"github.com/stagecast/stagecast/internal/redistest"
)

// Scenario is one fanout run.
type Scenario struct {
	Name    string
	Proxies int
	Devices int // in all, split evenly over proxies
}

// Config configures the coordinator.
type Config struct {
	Stagecast  string // path to the stagecast binary
	Self       string // path to this binary (client processes)
	OutDir     string
	Broadcasts int // per scenario; default 20
	PerClient  int // connections per client process; default 10000 (under the 20,000 open files limit)
	Scenarios  []Scenario
	Floor      bool // also measure the raw-TCP floor for each scenario's per-proxy count
	// PprofAddr, if set, is given to proxy 0 as --debug-addr and a CPU profile of
	// the broadcast phase is written to OutDir/<scenario>/proxy-0.cpu.pprof.
	PprofAddr string
	// CoderClients: client processes use coder/websocket instead of the minimal reader.
	CoderClients bool
	// Analytics runs a Kafka-protocol broker (stagecast kafka-dev) and gives
	// the proxies --kafka-brokers; with KillKafkaAfter > 0 the broker is killed
	// after that many broadcasts (the stream must not slow deliveries).
	Analytics      bool
	KillKafkaAfter int
	// DeviceSample, when >= 0, is the proxies' --analytics-device-sample
	// (negative: the proxy's default, 1 %).
	DeviceSample float64
	Log          io.Writer
}

// Result is one scenario's figures.
type Result struct {
	Scenario     Scenario
	Floor        bool
	P50MS, P99MS float64 // publish -> last device's receipt, over the broadcasts
	MaxMS        float64
	// BroadcastMS is each broadcast's publish -> last device's receipt, in order
	// (which one is slow, and whether it is always the same one).
	BroadcastMS   []float64
	DeliveriesSec float64 // devices / p50 time to last device
	ServerUSPer   float64 // server CPU microseconds per delivery
	ClientUSPer   float64 // client CPU microseconds per delivery (connect phase excluded)
	RSSKiBPer     float64 // server RSS growth per connected device, idle (2 s after the connects)
	// RSSAfterKiBPer is the same after the broadcasts (and 2 s of quiet).
	RSSAfterKiBPer float64
	// StackKiBPer and HeapKiBPer split the idle proxy's memory per device
	// (go_memstats_stack_inuse_bytes and go_memstats_heap_inuse_bytes growth,
	// from its /metrics); KernelKiBPer is the kernel's TCP memory growth per
	// device (/proc/net/sockstat, both ends of every loopback socket), beside
	// RSS, which does not hold it.
	StackKiBPer, HeapKiBPer, KernelKiBPer float64
	// SlabKiBPer is the kernel slab growth per device over the connects,
	// halved (both ends of each loopback connection are on this machine):
	// the socket, inode, file and epoll structures of one server socket.
	SlabKiBPer float64
	Missed     int64 // deliveries that never arrived
	// With Analytics: records the proxies emitted, the brokers acknowledged and
	// dropped, and the proxies' RSS growth from before to after the broadcasts.
	AnalyticsEmitted, AnalyticsSent, AnalyticsDropped float64
	RSSGrowthKiB                                      float64
}

type proc = benchproc.Proc

var (
	start     = benchproc.Start
	freeAddr  = benchproc.FreeAddr
	procCPU   = benchproc.CPU
	procRSS   = benchproc.RSS
	kernelKiB = benchproc.KernelTCPKiB
	slabKiB   = benchproc.SlabKiB
)

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// next reads the next JSON message from p (with a timeout).
func next(p *proc, timeout time.Duration) (msg, error) {
	var m msg
	_, err := p.NextLine(timeout, func(b []byte) bool {
		m = msg{}
		return json.Unmarshal(b, &m) == nil && m.Type != ""
	})
	if err == nil && m.Type == "error" {
		return m, fmt.Errorf("%s: %s", p.Name, m.Err)
	}
	return m, err
}

var srcSeq int

const benchToken = "fanoutbench-token-0123456789"

// Run runs every scenario (and its floor) and returns the results.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Broadcasts <= 0 {
		cfg.Broadcasts = 20
	}
	if cfg.PerClient <= 0 {
		cfg.PerClient = 10000
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	var out []Result
	for _, sc := range cfg.Scenarios {
		r, err := runScenario(ctx, cfg, sc)
		if err != nil {
			return out, fmt.Errorf("%s: %w", sc.Name, err)
		}
		out = append(out, r)
		cfg.logf("%s", r)
		if cfg.Floor {
			fr, err := runFloor(ctx, cfg, sc)
			if err != nil {
				return out, fmt.Errorf("%s floor: %w", sc.Name, err)
			}
			out = append(out, fr)
			cfg.logf("%s", fr)
		}
	}
	return out, nil
}

func (r Result) String() string {
	kind := "stagecast"
	if r.Floor {
		kind = "raw-TCP floor"
	}
	return fmt.Sprintf("%-8s %-14s devices=%d proxies=%d  last-device p50=%.1fms p99=%.1fms  %.0f deliveries/s  server %.2fus/delivery  client %.2fus/delivery  RSS %.1f KiB/device  missed=%d",
		r.Scenario.Name, kind, r.Scenario.Devices, r.Scenario.Proxies, r.P50MS, r.P99MS, r.DeliveriesSec, r.ServerUSPer, r.ClientUSPer, r.RSSKiBPer, r.Missed) +
		r.memory() + r.analytics()
}

func (r Result) memory() string {
	if r.Floor {
		return ""
	}
	return fmt.Sprintf("\n  memory per device: RSS idle %.1f KiB (stacks %.1f, heap in use %.1f), after the broadcasts %.1f KiB; kernel: TCP buffers %.1f KiB (sockstat mem), slab %.1f KiB per socket",
		r.RSSKiBPer, r.StackKiBPer, r.HeapKiBPer, r.RSSAfterKiBPer, r.KernelKiBPer, r.SlabKiBPer)
}

func (r Result) analytics() string {
	if r.AnalyticsEmitted == 0 {
		return ""
	}
	return fmt.Sprintf("  analytics: emitted=%.0f sent=%.0f dropped=%.0f, RSS growth over the broadcasts %.0f KiB",
		r.AnalyticsEmitted, r.AnalyticsSent, r.AnalyticsDropped, r.RSSGrowthKiB)
}

// clientsFor splits n connections to targets into client processes of at most
// perClient, each from its own 127.0.0.x source.
func startClients(cfg Config, logDir string, targets []string, perTarget int, raw bool, event string) ([]*proc, error) {
	var procs []*proc
	srcSeq++
	src := 2 + (srcSeq*8)%240 // fresh source addresses per run: earlier runs' ports sit in TIME_WAIT
	for ti, target := range targets {
		left := perTarget
		for left > 0 {
			k := min(left, cfg.PerClient)
			left -= k
			argv := []string{cfg.Self, "clients", "--url", target, "--n", strconv.Itoa(k), "--src", fmt.Sprintf("127.0.0.%d", src), "--event", event}
			if raw {
				argv = append(argv, "--raw")
			} else if cfg.CoderClients {
				argv = append(argv, "--coder")
			}
			p, err := start(fmt.Sprintf("clients-%d-%d", ti, src), logDir, argv, nil)
			if err != nil {
				return procs, err
			}
			procs = append(procs, p)
			src++
		}
	}
	return procs, nil
}

func waitAll(procs []*proc, typ string, timeout time.Duration) ([]msg, error) {
	var ms []msg
	for _, p := range procs {
		m, err := next(p, timeout)
		if err != nil {
			return nil, err
		}
		if m.Type != typ {
			return nil, fmt.Errorf("%s: got %q, want %q", p.Name, m.Type, typ)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func runScenario(ctx context.Context, cfg Config, sc Scenario) (Result, error) {
	res := Result{Scenario: sc}
	logDir := filepath.Join(cfg.OutDir, sc.Name)
	_ = os.MkdirAll(logDir, 0o755)
	var all []*proc
	defer func() {
		for i := len(all) - 1; i >= 0; i-- {
			all[i].Stop()
		}
	}()
	redis, raddr, err := benchproc.StartRedis(logDir, redistest.Ping)
	if err != nil {
		return res, err
	}
	all = append(all, redis)
	env := []string{"STAGECAST_PRODUCER_TOKEN=" + benchToken, "STAGECAST_REDIS=" + raddr, "STAGECAST_LOG_LEVEL=warn"}
	baddr := freeAddr()
	bc, err := start("broadcaster", logDir, []string{cfg.Stagecast, "broadcaster", "--addr", baddr}, env)
	if err != nil {
		return res, err
	}
	all = append(all, bc)
	var kafka *proc
	kaddr := ""
	if cfg.Analytics {
		kaddr = freeAddr()
		if kafka, err = start("kafka-dev", logDir, []string{cfg.Stagecast, "kafka-dev", "--addr", kaddr}, env); err != nil {
			return res, err
		}
		all = append(all, kafka)
	}
	var proxies []*proc
	var urls, paddrs []string
	for i := 0; i < sc.Proxies; i++ {
		paddr := freeAddr()
		paddrs = append(paddrs, paddr)
		argv := []string{cfg.Stagecast, "proxy", "--addr", paddr, "--proxy-id", fmt.Sprintf("bench-%d", i),
			"--max-connections", "20000", "--admit-rate", "100000", "--admit-burst", "100000", "--ping-interval", "10m",
			"--ip-limit-exempt", "127.0.0.0/8"}
		if kaddr != "" {
			argv = append(argv, "--kafka-brokers", kaddr)
			if cfg.DeviceSample >= 0 {
				argv = append(argv, "--analytics-device-sample", strconv.FormatFloat(cfg.DeviceSample, 'f', -1, 64))
			}
		}
		if i == 0 && cfg.PprofAddr != "" {
			argv = append(argv, "--debug-addr", cfg.PprofAddr)
		}
		p, err := start(fmt.Sprintf("proxy-%d", i), logDir, argv, env)
		if err != nil {
			return res, err
		}
		all = append(all, p)
		proxies = append(proxies, p)
		urls = append(urls, "ws://"+paddr+"/v1/ws")
	}
	client := &producer.Client{BaseURL: "http://" + baddr, Token: benchToken}
	const event = "bench"
	var first producer.StageReply
	for i := 0; ; i++ {
		if first, err = client.SetStage(ctx, event, "round-0", nil, "bench-first"); err == nil {
			break
		}
		if i > 200 {
			return res, fmt.Errorf("broadcaster not answering: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if first.V == 0 {
		return res, fmt.Errorf("the first change got no version: %+v", first)
	}
	time.Sleep(300 * time.Millisecond) // proxies listening
	rss0 := make([]int64, len(proxies))
	mem0 := make([]map[string]float64, len(proxies))
	for i, p := range proxies {
		rss0[i] = procRSS(p.Cmd.Process.Pid)
		mem0[i] = scrape("http://" + paddrs[i] + "/metrics")
	}
	kern0, slab0 := kernelKiB(), slabKiB()
	clients, err := startClients(cfg, logDir, urls, sc.Devices/sc.Proxies, false, event)
	all = append(all, clients...)
	if err != nil {
		return res, err
	}
	if _, err := waitAll(clients, "ready", 180*time.Second); err != nil {
		return res, err
	}
	time.Sleep(2 * time.Second) // let the connect burst's garbage be collected
	var rss int64
	for i, p := range proxies {
		rss += procRSS(p.Cmd.Process.Pid) - rss0[i]
	}
	res.RSSKiBPer = float64(rss) / float64(sc.Devices)
	res.KernelKiBPer = float64(kernelKiB()-kern0) / float64(sc.Devices)
	res.SlabKiBPer = float64(slabKiB()-slab0) / 2 / float64(sc.Devices)
	for i := range proxies {
		m := scrape("http://" + paddrs[i] + "/metrics")
		res.StackKiBPer += grownKiB(m, mem0[i], "go_memstats_stack_inuse_bytes", sc.Devices)
		res.HeapKiBPer += grownKiB(m, mem0[i], "go_memstats_heap_inuse_bytes", sc.Devices)
	}

	if cfg.PprofAddr != "" {
		// after the idle figures: ?gc=1 collects first, which would lower them
		saveProfile(cfg, "http://"+cfg.PprofAddr+"/debug/pprof/heap?gc=1", filepath.Join(logDir, "proxy-0.idle.heap.pprof"))
		m := scrape("http://" + paddrs[0] + "/metrics")
		n := sc.Devices / sc.Proxies // proxy 0's devices
		cfg.logf("  proxy-0 after a collection: heap in use %.1f KiB/device, live %.1f KiB/device",
			grownKiB(m, mem0[0], "go_memstats_heap_inuse_bytes", n), grownKiB(m, mem0[0], "go_memstats_heap_alloc_bytes", n))
	}
	cpu0 := make([]time.Duration, len(proxies))
	for i, p := range proxies {
		cpu0[i] = procCPU(p.Cmd.Process.Pid)
	}
	cl0 := make([]time.Duration, len(clients))
	for i, c := range clients {
		cl0[i] = procCPU(c.Cmd.Process.Pid)
	}
	profDone := make(chan struct{})
	if cfg.PprofAddr != "" {
		go func() {
			defer close(profDone)
			secs := max(1, cfg.Broadcasts/10)
			saveProfile(cfg, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", cfg.PprofAddr, secs), filepath.Join(logDir, "proxy-0.cpu.pprof"))
		}()
	} else {
		close(profDone)
	}
	defer func() { <-profDone }()
	var lats []float64
	for b := 0; b < cfg.Broadcasts; b++ {
		t0 := time.Now()
		r, err := client.SetStage(ctx, event, "round-"+strconv.Itoa(b+1), nil, "")
		if err != nil {
			return res, err
		}
		ms, err := waitAll(clients, "done", 30*time.Second)
		if err != nil {
			res.Missed += int64(sc.Devices)
			return res, fmt.Errorf("broadcast v%d: %w", r.V, err)
		}
		var last int64
		for _, m := range ms {
			if m.V != r.V {
				return res, fmt.Errorf("done for v%d, want v%d", m.V, r.V)
			}
			last = max(last, m.LastNS)
		}
		lats = append(lats, float64(last-t0.UnixNano())/1e6)
		time.Sleep(100 * time.Millisecond)
		if kafka != nil && b+1 == cfg.KillKafkaAfter {
			cfg.logf("killing the Kafka broker after %d broadcasts", b+1)
			kafka.Stop()
		}
	}
	// CPU over the broadcasts only (the analytics wait and scrape below are
	// not deliveries' work)
	var cpu, ccpu time.Duration
	for i, p := range proxies {
		cpu += procCPU(p.Cmd.Process.Pid) - cpu0[i]
	}
	for i, c := range clients {
		ccpu += procCPU(c.Cmd.Process.Pid) - cl0[i]
	}
	time.Sleep(2 * time.Second) // quiet, as before the idle figure (and the analytics' last records' linger)
	var rssAfter int64
	for i, p := range proxies {
		rssAfter += procRSS(p.Cmd.Process.Pid) - rss0[i]
	}
	res.RSSAfterKiBPer = float64(rssAfter) / float64(sc.Devices)
	if cfg.Analytics {
		for i, p := range proxies {
			res.RSSGrowthKiB += float64(procRSS(p.Cmd.Process.Pid)-rss0[i]) / 1024
			m := scrape("http://" + paddrs[i] + "/metrics")
			res.AnalyticsEmitted += m["stagecast_analytics_records_emitted_total"]
			res.AnalyticsSent += m["stagecast_analytics_records_sent_total"]
			res.AnalyticsDropped += m["stagecast_analytics_dropped_total"]
		}
		res.RSSGrowthKiB -= res.RSSKiBPer * float64(sc.Devices) / 1024 // growth during the broadcasts only
	}
	deliveries := float64(sc.Devices * cfg.Broadcasts)
	res.P50MS, res.P99MS, res.MaxMS = percentile(lats, 0.5), percentile(lats, 0.99), percentile(lats, 1)
	res.BroadcastMS = lats
	res.DeliveriesSec = float64(sc.Devices) / (res.P50MS / 1000)
	res.ServerUSPer = float64(cpu.Microseconds()) / deliveries
	res.ClientUSPer = float64(ccpu.Microseconds()) / deliveries
	return res, nil
}

// runFloor measures the raw-TCP floor for the largest per-proxy device count of sc
// (one server process, as many connections as one proxy holds).
func runFloor(ctx context.Context, cfg Config, sc Scenario) (Result, error) {
	n := sc.Devices / sc.Proxies
	res := Result{Scenario: Scenario{Name: sc.Name, Proxies: 1, Devices: n}, Floor: true}
	logDir := filepath.Join(cfg.OutDir, sc.Name+"-floor")
	_ = os.MkdirAll(logDir, 0o755)
	addr := freeAddr()
	srv, err := start("floor-server", logDir, []string{cfg.Self, "floor-server", "--addr", addr, "--n", strconv.Itoa(n)}, nil)
	if err != nil {
		return res, err
	}
	defer srv.Stop()
	if _, err := srv.NextLine(30*time.Second, func([]byte) bool { return true }); err != nil { // its address line
		return res, fmt.Errorf("floor server did not start: %w", err)
	}
	rss0 := procRSS(srv.Cmd.Process.Pid)
	clients, err := startClients(cfg, logDir, []string{addr}, n, true, "bench")
	defer func() {
		for _, c := range clients {
			c.Stop()
		}
	}()
	if err != nil {
		return res, err
	}
	if _, err := waitAll(clients, "ready", 180*time.Second); err != nil {
		return res, err
	}
	if _, err := next(srv, 60*time.Second); err != nil {
		return res, err
	}
	time.Sleep(time.Second)
	res.RSSKiBPer = float64(procRSS(srv.Cmd.Process.Pid)-rss0) / float64(n)
	cpu0 := procCPU(srv.Cmd.Process.Pid)
	cl0 := make([]time.Duration, len(clients))
	for i, c := range clients {
		cl0[i] = procCPU(c.Cmd.Process.Pid)
	}
	var lats []float64
	for b := 0; b < cfg.Broadcasts; b++ {
		v := uint64(b + 2)
		t0 := time.Now()
		if _, err := fmt.Fprintf(srv.In, "send %d\n", v); err != nil {
			return res, err
		}
		ms, err := waitAll(clients, "done", 30*time.Second)
		if err != nil {
			return res, err
		}
		var last int64
		for _, m := range ms {
			last = max(last, m.LastNS)
		}
		lats = append(lats, float64(last-t0.UnixNano())/1e6)
		time.Sleep(100 * time.Millisecond)
	}
	cpu := procCPU(srv.Cmd.Process.Pid) - cpu0
	var ccpu time.Duration
	for i, c := range clients {
		ccpu += procCPU(c.Cmd.Process.Pid) - cl0[i]
	}
	deliveries := float64(n * cfg.Broadcasts)
	res.P50MS, res.P99MS, res.MaxMS = percentile(lats, 0.5), percentile(lats, 0.99), percentile(lats, 1)
	res.BroadcastMS = lats
	res.DeliveriesSec = float64(n) / (res.P50MS / 1000)
	res.ServerUSPer = float64(cpu.Microseconds()) / deliveries
	res.ClientUSPer = float64(ccpu.Microseconds()) / deliveries
	return res, nil
}

// grownKiB is how much metric name (bytes) grew from m0 to m, in KiB per
// device of n.
func grownKiB(m, m0 map[string]float64, name string, n int) float64 {
	return (m[name] - m0[name]) / 1024 / float64(n)
}

// saveProfile writes the pprof answer at url to path (a failure is logged: a
// profile is extra, not a figure).
func saveProfile(cfg Config, url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		cfg.logf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		cfg.logf("profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		cfg.logf("profile: %v", err)
	}
}

// scrape reads a Prometheus text page into name -> value (series of one name summed).
func scrape(url string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(url)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] += v
		}
	}
	return out
}
