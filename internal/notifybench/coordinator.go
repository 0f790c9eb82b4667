package notifybench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/stagecast/stagecast/broadcaster/producer"
	"github.com/stagecast/stagecast/internal/benchproc"
	"github.com/stagecast/stagecast/internal/defaults"
	"github.com/stagecast/stagecast/internal/device"
	"github.com/stagecast/stagecast/internal/devicetoken"
	"github.com/stagecast/stagecast/internal/redistest"
	"github.com/stagecast/stagecast/internal/wire"
)

// Config configures a run. Zero values are the defaults of make bench-notify.
type Config struct {
	Stagecast string // stagecast binary
	Self      string // this binary (client processes)
	OutDir    string
	Devices   int           // online devices, two per member; default 20000
	PerClient int           // devices per client process; default 10000
	Rates     []int         // steady rates tried in order, notes/s; default 2000, 5000, 10000, 15000
	Duration  time.Duration // per rate; default 60s
	P99Budget time.Duration // POST -> device; default 250ms
	Flood     int           // low notes in the flood; default 50000
	Critical  int           // critical notes/s during the priority phase; default 200
	// Batch > 1 sends the steady rates' notes in batches of up to Batch
	// (POST /v1/notifications:batch); 0 or 1: one note per request.
	Batch int
	// FloodBatch > 1 sends the flood's low notes in batches of up to
	// FloodBatch; 0 or 1: one note per request (the default).
	FloodBatch int
	// Pprof, if set (e.g. 127.0.0.1:6061), is the broadcaster's --debug-addr, and
	// a 10 s CPU profile of the first rate is written to OutDir/broadcaster.cpu.pprof.
	Pprof string
	Log   io.Writer
}

// DefaultConfig returns the bench's defaults (make bench-notify); Run fills
// each zero field of its Config from it (package defaults).
func DefaultConfig() Config {
	return Config{Devices: 20000, PerClient: 10000, Rates: []int{2000, 5000, 10000, 15000}, Duration: 60 * time.Second,
		P99Budget: 250 * time.Millisecond, Flood: 50000, Critical: 200}
}

func (c *Config) defaults() { defaults.Fill(c, DefaultConfig()) }

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Step is one steady rate.
type Step struct {
	Rate      int     `json:"rate"`
	Achieved  float64 `json:"achieved_per_s"` // 202s per second
	Refused   int64   `json:"refused"`        // non-202 answers
	Expected  int64   `json:"expected"`       // 202s x 2 devices
	Received  int64   `json:"received"`
	Lost      int64   `json:"lost"`
	P50MS     float64 `json:"p50_ms"`
	P99MS     float64 `json:"p99_ms"`
	MaxMS     float64 `json:"max_ms"`
	PostP99MS float64 `json:"post_p99_ms"`
	Pass      bool    `json:"pass"`
	// CPUPerNote is each process's CPU per accepted note, microseconds
	// ("producers" is this coordinator).
	CPUPerNote map[string]float64 `json:"cpu_us_per_note"`
	// RedisPerNote is Redis's own account of the step (INFO commandstats,
	// reset at the step's start, read after the proxies' next report flush):
	// per command, calls and microseconds inside Redis per accepted note.
	// Inside a script, its commands count both under their own names and
	// under evalsha; Redis's I/O and parsing are in neither.
	RedisPerNote map[string]RedisCmd `json:"redis_per_note,omitempty"`
}

// RedisCmd is one Redis command's calls and time per note.
type RedisCmd struct {
	Calls float64 `json:"calls"`
	Usec  float64 `json:"usec"`
}

// Results are a run's figures.
type Results struct {
	Devices            int     `json:"devices"`
	Members            int     `json:"members"`
	Steps              []Step  `json:"steps"`
	BestRate           float64 `json:"best_rate_per_s"` // highest achieved rate of a passing step
	CriticalAloneP99MS float64 `json:"critical_alone_p99_ms"`
	CriticalFloodP99MS float64 `json:"critical_flood_p99_ms"`
	// The same notes' POST p99 (until the 202: stored and pushed).
	CriticalAlonePostP99MS float64 `json:"critical_alone_post_p99_ms"`
	CriticalFloodPostP99MS float64 `json:"critical_flood_post_p99_ms"`
	// The broadcaster's own p99 for the same notes, from lane arrival to
	// stored and pushed (its notification_seconds histogram: a bucket's upper
	// bound, buckets doubling from 0.5 ms).
	CriticalAloneLaneP99MS float64 `json:"critical_alone_lane_p99_ms"`
	CriticalFloodLaneP99MS float64 `json:"critical_flood_lane_p99_ms"`
	// The part of it in engine calls (notification_engine_seconds).
	CriticalAloneEngineP99MS float64 `json:"critical_alone_engine_p99_ms"`
	CriticalFloodEngineP99MS float64 `json:"critical_flood_engine_p99_ms"`
	FloodRatio               float64 `json:"flood_ratio"`
	FloodSeconds             float64 `json:"flood_seconds"`
	LowAccepted              int64   `json:"low_accepted"`
	LowRefused               int64   `json:"low_refused"`
	LowReceived              int64   `json:"low_received"`
	CriticalLost             int64   `json:"critical_lost"`
	RedisBytesPerNote        float64 `json:"redis_bytes_per_note"`
	PullsPerSec              float64 `json:"inbox_pulls_per_s"`
	PullP50MS                float64 `json:"inbox_pull_p50_ms"`
	PullP99MS                float64 `json:"inbox_pull_p99_ms"`
}

const benchToken = "notifybench-token-0123456789"

type run struct {
	cfg     Config
	procs   []*benchproc.Proc
	bc      *producer.Client
	clients []*benchproc.Proc
	redis   string
	gql     string
	signer  *devicetoken.Signer
	members int
}

// Run starts everything, runs every phase and returns the figures.
func Run(ctx context.Context, cfg Config) (Results, error) {
	cfg.defaults()
	res := Results{Devices: cfg.Devices, Members: cfg.Devices / 2}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return res, err
	}
	var all []*benchproc.Proc
	defer func() {
		for i := len(all) - 1; i >= 0; i-- {
			all[i].Stop()
		}
	}()
	redis, raddr, err := benchproc.StartRedis(cfg.OutDir, redistest.Ping)
	if err != nil {
		return res, err
	}
	all = append(all, redis)
	keyDir := filepath.Join(cfg.OutDir, "keys")
	if out, err := exec.Command(cfg.Stagecast, "token", "keygen", "--out", keyDir).CombinedOutput(); err != nil {
		return res, fmt.Errorf("keygen: %v: %s", err, out)
	}
	signer, err := devicetoken.LoadSigner(filepath.Join(keyDir, "device-signing.jwk"))
	if err != nil {
		return res, err
	}
	env := []string{"STAGECAST_PRODUCER_TOKEN=" + benchToken, "STAGECAST_REDIS=" + raddr, "STAGECAST_LOG_LEVEL=warn",
		"STAGECAST_DEVICE_KEYS=" + filepath.Join(keyDir, "device-keys.jwks")}
	baddr := benchproc.FreeAddr()
	bargv := []string{cfg.Stagecast, "broadcaster", "--addr", baddr, "--producer-rate", "-1"}
	if cfg.Pprof != "" {
		bargv = append(bargv, "--debug-addr", cfg.Pprof)
	}
	p, err := benchproc.Start("broadcaster", cfg.OutDir, bargv, env)
	if err != nil {
		return res, err
	}
	all = append(all, p)
	var urls []string
	for i := range 2 {
		paddr := benchproc.FreeAddr()
		p, err := benchproc.Start(fmt.Sprintf("proxy-%d", i), cfg.OutDir, []string{cfg.Stagecast, "proxy", "--addr", paddr,
			"--proxy-id", fmt.Sprintf("nb-%d", i), "--max-connections", "20000", "--admit-rate", "100000", "--admit-burst", "100000",
			"--ping-interval", "10m", "--ip-limit-exempt", "127.0.0.0/8"}, env)
		if err != nil {
			return res, err
		}
		all = append(all, p)
		urls = append(urls, "ws://"+paddr+"/v1/ws")
		if err := waitReady("http://" + paddr + "/readyz"); err != nil {
			return res, err
		}
	}
	gaddr := benchproc.FreeAddr()
	if p, err = benchproc.Start("prefetch", cfg.OutDir, []string{cfg.Stagecast, "prefetch", "--addr", gaddr}, env); err != nil {
		return res, err
	}
	all = append(all, p)
	if err := waitReady("http://" + gaddr + "/readyz"); err != nil {
		return res, err
	}
	r := &run{cfg: cfg, bc: &producer.Client{BaseURL: "http://" + baddr, Token: benchToken,
		HTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}},
		redis: raddr, gql: "http://" + gaddr + "/graphql", signer: signer, members: cfg.Devices / 2}
	for from := 0; from < cfg.Devices; from += cfg.PerClient {
		n := min(cfg.PerClient, cfg.Devices-from)
		c, err := benchproc.Start(fmt.Sprintf("clients-%d", from), cfg.OutDir, []string{cfg.Self, "clients",
			"--urls", strings.Join(urls, ","), "--from", strconv.Itoa(from), "--n", strconv.Itoa(n),
			"--key", filepath.Join(keyDir, "device-signing.jwk")}, nil)
		if err != nil {
			return res, err
		}
		all = append(all, c)
		r.clients = append(r.clients, c)
	}
	r.procs = all
	for _, c := range r.clients {
		if _, err := c.NextLine(3*time.Minute, isType("ready")); err != nil {
			return res, err
		}
	}
	cfg.logf("%d devices of %d members connected to 2 proxies", cfg.Devices, r.members)

	mem0 := redisMemory(raddr)
	stored := int64(0)
	for _, rate := range cfg.Rates {
		st, err := r.steady(ctx, rate)
		if err != nil {
			return res, err
		}
		stored += st.Expected / 2
		res.Steps = append(res.Steps, st)
		cfg.logf("rate %6d/s: achieved %7.0f/s  refused %d  lost %d of %d  POST->device p50 %.1f ms p99 %.1f ms max %.1f ms  POST p99 %.1f ms  %s",
			st.Rate, st.Achieved, st.Refused, st.Lost, st.Expected, st.P50MS, st.P99MS, st.MaxMS, st.PostP99MS, map[bool]string{true: "PASS", false: "FAIL"}[st.Pass])
		cfg.logf("  CPU per note (us): %s", formatCPU(st.CPUPerNote))
		cfg.logf("  inside Redis per note (calls, us): %s", formatRedis(st.RedisPerNote))
		if st.Pass {
			res.BestRate = max(res.BestRate, st.Achieved)
		} else {
			break
		}
	}
	if stored > 0 {
		res.RedisBytesPerNote = float64(redisMemory(raddr)-mem0) / float64(stored)
	}
	if err := r.priorities(ctx, &res); err != nil {
		return res, err
	}
	cfg.logf("critical p99 alone %.1f ms, during a flood of %d low %.1f ms (x%.2f); flood took %.1f s: %d low accepted, %d refused (503), %d delivered; critical lost %d",
		res.CriticalAloneP99MS, cfg.Flood, res.CriticalFloodP99MS, res.FloodRatio, res.FloodSeconds, res.LowAccepted, res.LowRefused, res.LowReceived, res.CriticalLost)
	cfg.logf("  critical POST p99 (to the 202) alone %.1f ms, during the flood %.1f ms", res.CriticalAlonePostP99MS, res.CriticalFloodPostP99MS)
	cfg.logf("  critical p99 inside the broadcaster (lane to stored and pushed, bucket bound) alone <= %.1f ms, during the flood <= %.1f ms", res.CriticalAloneLaneP99MS, res.CriticalFloodLaneP99MS)
	cfg.logf("  of which the engine calls (Redis round trips) alone <= %.1f ms, during the flood <= %.1f ms", res.CriticalAloneEngineP99MS, res.CriticalFloodEngineP99MS)
	cfg.logf("Redis memory per stored note: %.0f bytes", res.RedisBytesPerNote)
	if err := r.pulls(ctx, &res); err != nil {
		return res, err
	}
	cfg.logf("inbox pulls: %.0f/s, p50 %.1f ms, p99 %.1f ms", res.PullsPerSec, res.PullP50MS, res.PullP99MS)
	return res, nil
}

func isType(t string) func([]byte) bool {
	return func(b []byte) bool {
		var m struct {
			Type string `json:"type"`
		}
		return json.Unmarshal(b, &m) == nil && m.Type == t
	}
}

func waitReady(url string) error {
	for i := 0; i < 400; i++ {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(25 * time.Millisecond) // polling a starting process
	}
	return fmt.Errorf("%s never ready", url)
}

func redisCLI(addr string, args ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// redisCommands reads INFO commandstats per note (lines like
// "cmdstat_xadd:calls=10,usec=25,usec_per_call=2.50,...").
func redisCommands(addr string, notes int64) map[string]RedisCmd {
	out := map[string]RedisCmd{}
	for _, line := range strings.Split(redisCLI(addr, "info", "commandstats"), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		var c RedisCmd
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			f, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "calls":
				c.Calls = f / float64(notes)
			case "usec":
				c.Usec = f / float64(notes)
			}
		}
		out[name] = c
	}
	return out
}

// formatRedis lists the commands by time per note, the costliest first.
func formatRedis(m map[string]RedisCmd) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(m[b].Usec, m[a].Usec) })
	var b strings.Builder
	for i, n := range names {
		if i == 12 {
			break
		}
		fmt.Fprintf(&b, "%s %.2fx %.1f us  ", n, m[n].Calls, m[n].Usec)
	}
	return b.String()
}

// redisMemory is Redis's used_memory in bytes.
func redisMemory(addr string) int64 {
	for _, line := range strings.Split(redisCLI(addr, "info", "memory"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// report merges the client processes' reports.
func (r *run) report() (received [wire.NumPriorities]int64, hist [wire.NumPriorities]*hdrhistogram.Histogram, err error) {
	for p := range hist {
		hist[p] = newHist()
	}
	for _, c := range r.clients {
		if _, err := fmt.Fprintln(c.In, "report"); err != nil {
			return received, hist, err
		}
		b, err := c.NextLine(30*time.Second, isType("report"))
		if err != nil {
			return received, hist, err
		}
		var rep clientReport
		if err := json.Unmarshal(b, &rep); err != nil {
			return received, hist, err
		}
		for p := range received {
			received[p] += rep.Received[p]
			if rep.Hist[p] != nil {
				hist[p].Merge(hdrhistogram.Import(rep.Hist[p]))
			}
		}
	}
	return received, hist, nil
}

func (r *run) reset() error {
	for _, c := range r.clients {
		if _, err := fmt.Fprintln(c.In, "reset"); err != nil {
			return err
		}
		if _, err := c.NextLine(30*time.Second, isType("reset")); err != nil {
			return err
		}
	}
	return nil
}

// noteSender sends notes to random members at a paced rate (0: as fast as the
// workers go) until n are sent (n > 0) or ctx ends.
type noteSender struct {
	r        *run
	prio     string
	rate     int
	n        int64
	workers  int
	batch    int // notes per request (> 1: POST /v1/notifications:batch)
	accepted atomic.Int64
	refused  atomic.Int64
	mu       sync.Mutex
	post     *hdrhistogram.Histogram
}

// batchLinger is how long a batching sender holds owed notes before it sends
// a batch smaller than --batch (a producer's linger, as Kafka clients have).
const batchLinger = 10 * time.Millisecond

func (p *noteSender) run(ctx context.Context) {
	p.post = newHist()
	batch := max(1, p.batch)
	jobs := make(chan int, 1<<16) // notes per request
	var wg sync.WaitGroup
	for range p.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			notes := make([]producer.BatchNote, 0, batch)
			for n := range jobs {
				start := time.Now()
				note := func() producer.NotifyRequest {
					member := "m" + strconv.Itoa(rng.IntN(p.r.members))
					return producer.NotifyRequest{To: producer.NotifyTargets{Members: []string{member}},
						Type: "bench", Priority: p.prio, Payload: json.RawMessage(`{"t":` + strconv.FormatInt(start.UnixNano(), 10) + `}`)}
				}
				if batch == 1 {
					if _, err := p.r.bc.Notify(context.Background(), note(), ""); err != nil {
						p.refused.Add(1)
						continue
					}
					p.accepted.Add(1)
					p.mu.Lock()
					_ = p.post.RecordValue(max(time.Since(start).Microseconds(), 1))
					p.mu.Unlock()
					continue
				}
				notes = notes[:0]
				for range n {
					notes = append(notes, producer.BatchNote{Notification: note()})
				}
				res, err := p.r.bc.NotifyBatch(context.Background(), notes)
				if err != nil {
					p.refused.Add(int64(len(notes)))
					continue
				}
				took := max(time.Since(start).Microseconds(), 1)
				for _, r := range res {
					if r.Status != 202 {
						p.refused.Add(1)
						continue
					}
					p.accepted.Add(1)
					p.mu.Lock()
					_ = p.post.RecordValue(took)
					p.mu.Unlock()
				}
			}
		}()
	}
	// The pacer: every millisecond, the notes owed by now go out, one per
	// request, or (batching) in requests of --batch notes, a smaller one
	// once the oldest owed note has waited batchLinger.
	issued, held := int64(0), int64(0)
	heldSince := time.Time{}
	begin := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	send := func(n int64) bool {
		select {
		case jobs <- int(n):
			issued += n
			return true
		default:
			return false // workers are behind: the achieved rate shows it
		}
	}
loop:
	for p.n <= 0 || issued < p.n {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		owed := int64(1 << 12)
		if p.rate > 0 {
			owed = int64(time.Since(begin).Seconds()*float64(p.rate)) - issued - held
		}
		if p.n > 0 {
			owed = min(owed, p.n-issued-held)
		}
		if batch == 1 {
			for ; owed > 0 && send(1); owed-- {
			}
			continue
		}
		if owed > 0 && held == 0 {
			heldSince = time.Now()
		}
		held += max(owed, 0)
		for held >= int64(batch) && send(int64(batch)) {
			held -= int64(batch)
			heldSince = time.Now()
		}
		if held > 0 && (time.Since(heldSince) >= batchLinger || (p.n > 0 && issued+held >= p.n)) && send(held) {
			held = 0
		}
	}
	close(jobs)
	wg.Wait()
}

// settle waits until the devices received want notes of prio (or 15 s).
func (r *run) settle(prio wire.Priority, want int64) ([wire.NumPriorities]int64, [wire.NumPriorities]*hdrhistogram.Histogram, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		rec, hist, err := r.report()
		if err != nil || rec[prio] >= want || time.Now().After(deadline) {
			return rec, hist, err
		}
		time.Sleep(250 * time.Millisecond) // polling the clients
	}
}

func ms(us int64) float64 { return float64(us) / 1000 }

func (r *run) steady(ctx context.Context, rate int) (Step, error) {
	st := Step{Rate: rate}
	if err := r.reset(); err != nil {
		return st, err
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.Duration)
	p := &noteSender{r: r, prio: "normal", rate: rate, workers: 256, batch: r.cfg.Batch}
	redisCLI(r.redis, "config", "resetstat")
	cpu0 := r.cpu()
	start := time.Now()
	if r.cfg.Pprof != "" && rate == r.cfg.Rates[0] {
		go r.profile()
	}
	p.run(pctx)
	cancel()
	cpu1 := r.cpu()
	st.CPUPerNote = map[string]float64{}
	if n := p.accepted.Load(); n > 0 {
		for name, c := range cpu1 {
			st.CPUPerNote[name] = float64((c - cpu0[name]).Microseconds()) / float64(n)
		}
	}
	st.Achieved = float64(p.accepted.Load()) / time.Since(start).Seconds()
	st.Refused = p.refused.Load()
	st.Expected = 2 * p.accepted.Load()
	rec, hist, err := r.settle(wire.PriorityNormal, st.Expected)
	if err != nil {
		return st, err
	}
	time.Sleep(1500 * time.Millisecond) // the proxies' counts and read marks of the last notes (a 1 s report)
	if n := p.accepted.Load(); n > 0 {
		st.RedisPerNote = redisCommands(r.redis, n)
	}
	h := hist[wire.PriorityNormal]
	st.Received = rec[wire.PriorityNormal]
	st.Lost = max(st.Expected-st.Received, 0)
	st.P50MS, st.P99MS, st.MaxMS = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.Max())
	st.PostP99MS = ms(p.post.ValueAtQuantile(99))
	st.Pass = st.Lost == 0 && st.Refused == 0 && st.P99MS <= float64(r.cfg.P99Budget.Milliseconds()) && st.Achieved >= 0.95*float64(rate)
	return st, nil
}

// priorities measures critical latency alone, then during a flood of low notes.
func (r *run) priorities(ctx context.Context, res *Results) error {
	if err := r.reset(); err != nil {
		return err
	}
	lane0, err := r.criticalHists(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	crit := &noteSender{r: r, prio: "critical", rate: r.cfg.Critical, workers: 16}
	crit.run(cctx)
	cancel()
	lane1, err := r.criticalHists(ctx)
	if err != nil {
		return err
	}
	res.CriticalAloneLaneP99MS, res.CriticalAloneEngineP99MS = lane1.lane.p99Since(lane0.lane), lane1.engine.p99Since(lane0.engine)
	_, hist, err := r.settle(wire.PriorityCritical, 2*crit.accepted.Load())
	if err != nil {
		return err
	}
	res.CriticalAloneP99MS = ms(hist[wire.PriorityCritical].ValueAtQuantile(99))
	res.CriticalAlonePostP99MS = ms(crit.post.ValueAtQuantile(99))

	if err := r.reset(); err != nil {
		return err
	}
	low := &noteSender{r: r, prio: "low", n: int64(r.cfg.Flood), workers: 256, batch: r.cfg.FloodBatch}
	crit = &noteSender{r: r, prio: "critical", rate: r.cfg.Critical, workers: 16}
	fctx, stopCrit := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); crit.run(fctx) }()
	start := time.Now()
	low.run(ctx)
	res.FloodSeconds = time.Since(start).Seconds()
	stopCrit()
	wg.Wait()
	lane2, err := r.criticalHists(ctx)
	if err != nil {
		return err
	}
	res.CriticalFloodLaneP99MS, res.CriticalFloodEngineP99MS = lane2.lane.p99Since(lane1.lane), lane2.engine.p99Since(lane1.engine)
	rec, hist, err := r.settle(wire.PriorityCritical, 2*crit.accepted.Load())
	if err != nil {
		return err
	}
	res.CriticalFloodP99MS = ms(hist[wire.PriorityCritical].ValueAtQuantile(99))
	res.CriticalFloodPostP99MS = ms(crit.post.ValueAtQuantile(99))
	if res.CriticalAloneP99MS > 0 {
		res.FloodRatio = res.CriticalFloodP99MS / res.CriticalAloneP99MS
	}
	res.LowAccepted, res.LowRefused, res.LowReceived = low.accepted.Load(), low.refused.Load(), rec[wire.PriorityLow]
	res.CriticalLost = max(2*crit.accepted.Load()-rec[wire.PriorityCritical], 0)
	return nil
}

// pulls runs inbox queries for 10 s from 64 workers, each as a random member's device.
func (r *run) pulls(ctx context.Context, res *Results) error {
	// One token per device, used in turn: each device pulls at most every
	// len(tokens) pulls, within the per-device pull limit (0.5/s, a burst
	// of 10) at the rates reached here, so what is measured is pulls, not
	// refusals.
	tokens := make([]string, 2*r.members)
	for i := range tokens {
		m := i / 2
		tok, err := r.signer.Mint(devicetoken.Claims{Device: "d" + strconv.Itoa(i), Member: "m" + strconv.Itoa(m)}, time.Hour)
		if err != nil {
			return err
		}
		tokens[i] = tok
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}, Timeout: 10 * time.Second}
	h := newHist()
	var mu sync.Mutex
	var n, failed atomic.Int64
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; pctx.Err() == nil; i += 64 {
				t0 := time.Now()
				_, err := device.PullInbox(pctx, hc, r.gql, tokens[i%len(tokens)], "", 20)
				if err != nil {
					if pctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				n.Add(1)
				mu.Lock()
				_ = h.RecordValue(max(time.Since(t0).Microseconds(), 1))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n.Load() == 0 {
		return errors.New("no inbox pull succeeded")
	}
	res.PullsPerSec = float64(n.Load()) / time.Since(start).Seconds()
	res.PullP50MS, res.PullP99MS = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99))
	if f := failed.Load(); f > 0 {
		r.cfg.logf("inbox pulls: %d failed", f)
	}
	return nil
}

// cpu returns every process's CPU time so far, by name.
func (r *run) cpu() map[string]time.Duration {
	out := map[string]time.Duration{"producers": benchproc.CPU(os.Getpid())}
	for _, p := range r.procs {
		out[p.Name] = benchproc.CPU(p.Cmd.Process.Pid)
	}
	return out
}

func formatCPU(m map[string]float64) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	total := 0.0
	for _, n := range names {
		fmt.Fprintf(&b, "%s %.0f  ", n, m[n])
		total += m[n]
	}
	fmt.Fprintf(&b, "total %.0f", total)
	return b.String()
}

// profile writes a 10 s CPU profile of the broadcaster.
func (r *run) profile() {
	resp, err := http.Get("http://" + r.cfg.Pprof + "/debug/pprof/profile?seconds=10")
	if err != nil {
		r.cfg.logf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(r.cfg.OutDir, "broadcaster.cpu.pprof"))
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}
