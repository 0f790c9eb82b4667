package loadgen

import (
	"fmt"
	"math"
	"strings"
)

// FaultStats is what one fault of a live run did, and how the fleet recovered.
// Times are real (wall) milliseconds from the injection.
type FaultStats struct {
	AtS    float64 `json:"at"` // scenario time, seconds
	Action string  `json:"action"`
	Target string  `json:"target"`
	Member string  `json:"member,omitempty"` // what the fleet hit
	Error  string  `json:"error,omitempty"`  // the injection failed
	// DevicesAffected: the most devices disconnected at once after the fault.
	DevicesAffected int64 `json:"devices_affected"`
	// Reconnects: connections made from the fault until recovery.
	Reconnects        int64   `json:"reconnects"`
	ReconnectPeakPerS float64 `json:"reconnect_peak_per_s"`
	// RecoveredMS: until every device was connected again and held the latest
	// stage; -1 if that never happened within the watch (60 s).
	RecoveredMS float64 `json:"recovered_ms"`
	// ProducerBlockedMS: the longest a stage change took (retries of 503s
	// included) among those issued from the fault until recovery, or for 10 s
	// when that is sooner (a Redis failover moves no device but may hold a change).
	ProducerBlockedMS float64 `json:"producer_blocked_ms"`
	// Missed: devices not on the last stage at the end of the run.
	Missed int64 `json:"missed"`
	// Predicted by the simulator's recovery model, for comparison (proxy faults).
	PredictedMS float64 `json:"predicted_ms,omitempty"`

	// Network faults (partition, blackhole, delay, bandwidth, reset). For
	// them DevicesAffected also counts devices connected but stale (behind a
	// change the broadcaster acknowledged more than a second before), and
	// RecoveredMS runs until none is down or stale once the fault healed.
	// NoticedMS: until the member hit reported not ready (-1: it never did).
	NoticedMS float64 `json:"noticed_ms,omitempty"`
	// HealedMS: when the fault healed, from the injection.
	HealedMS float64 `json:"healed_ms,omitempty"`
	// RecoveredAfterHealMS: from the heal until every device was back on the
	// latest stage.
	RecoveredAfterHealMS float64 `json:"recovered_after_heal_ms,omitempty"`
}

// faultHeadline says whether every device recovered from every fault.
func faultHeadline(fs []FaultStats) string {
	if len(fs) == 0 {
		return ""
	}
	worst, ok := 0.0, true
	var parts []string
	for _, f := range fs {
		if f.Error != "" || f.RecoveredMS < 0 || f.Missed > 0 {
			ok = false
		}
		worst = math.Max(worst, f.RecoveredMS)
		parts = append(parts, fmt.Sprintf("%s %s: %.0f ms", f.Action, f.Member, f.RecoveredMS))
	}
	if ok {
		return fmt.Sprintf("every device recovered from all %d faults (slowest %.0f ms: %s)", len(fs), worst, strings.Join(parts, ", "))
	}
	return fmt.Sprintf("NOT every device recovered (%s)", strings.Join(parts, ", "))
}

// RecoveryModel is the closed form of a reconnect wave after a proxy is lost:
// D devices lose their proxy at once and retry with full-jitter backoff,
// attempt k after U(0, min(cap, base*2^k)); the surviving proxies admit at most
// Admit connections per second in all (past it: 503, retry). Drain spreads the
// loss over Window instead (reconnect frames), each device waiting U(0, Jitter).
type RecoveryModel struct {
	Devices     float64
	Base, Cap   float64 // seconds
	Admit       float64 // connections per second across the survivors
	Burst       float64 // their admission burst (tokens available at once)
	Window      float64 // seconds; 0 for a kill
	Jitter      float64 // seconds, drain's after_ms spread
	CatchUpSecs float64 // after reconnecting: sub + catch-up frame (a few ms)
	// RetryAfter, when > 0: a refused attempt carries the proxy's Retry-After,
	// U(RetryAfter, 2 x RetryAfter) seconds, and the device retries after it
	// (never sooner than its backoff: the longer of the two, as the device
	// client does). 0: the backoff alone.
	RetryAfter float64
	// Arrivals, when true, spreads the first attempts uniformly over Window
	// (devices arriving, as in a connect storm) instead of a drain's plan.
	Arrivals bool
}

// Recovery returns when the last device is connected again (seconds) and the
// peak rate of connection attempts (per second), in 1 ms steps over at most
// 300 s. A rejected attempt k is retried after U(0, min(cap, base*2^(k+1))),
// tracked per attempt number. Attempts are kept as rates per step in
// difference arrays, so spreading a batch over a window costs O(1).
func (m RecoveryModel) Recovery() (seconds, peakAttempts float64) {
	const dt, horizon, gens = 0.001, 300.0, 12
	n := int(horizon / dt)
	diff := make([][]float64, gens) // per attempt number: change of the attempt rate at each step
	for k := range diff {
		diff[k] = make([]float64, n+1)
	}
	first := make([]float64, n)
	if m.Arrivals {
		spreadUniform(first, 0, math.Max(m.Window, dt), m.Devices, dt)
	} else if m.Window > 0 {
		// Drain: each device is told at U(0, Window) and waits U(0, Jitter).
		spreadConv(first, m.Devices, m.Window, m.Jitter, dt)
	} else {
		spreadUniform(first, 0, m.Base, m.Devices, dt)
	}
	prev := 0.0
	for i, v := range first {
		diff[0][i] += v - prev
		prev = v
	}
	diff[0][n] -= prev
	rate := make([]float64, gens) // attempts per step, per attempt number
	connected := 0.0
	burst := math.Max(m.Burst, 1)
	budget := burst
	for i := 0; i < n; i++ {
		t := float64(i) * dt
		budget = math.Min(budget+m.Admit*dt, burst) // the survivors' token buckets
		var all float64
		for k := range rate {
			rate[k] += diff[k][i]
			all += max(rate[k], 0)
		}
		peakAttempts = math.Max(peakAttempts, all/dt)
		if all <= 1e-12 {
			if connected >= m.Devices-0.5 {
				return t + m.CatchUpSecs, peakAttempts
			}
			continue
		}
		share := math.Min(1, budget/all) // admitted fraction of this step's attempts
		budget -= all * share
		connected += all * share
		if share < 1 {
			for k := range rate {
				rej := max(rate[k], 0) * (1 - share)
				if rej <= 1e-12 {
					continue
				}
				next := min(k+1, gens-1)
				from := i + 1
				steps := max(1, int(math.Ceil(math.Min(m.Cap, m.Base*math.Pow(2, float64(k+1)))/dt)))
				if ra := m.RetryAfter; ra > 0 && ra >= math.Min(m.Cap, m.Base*math.Pow(2, float64(k+1)))/2 {
					// The proxy's U(ra, 2ra) wait is the longer one (the
					// backoff's mean is half its window): retry in it.
					from, steps = i+int(math.Ceil(ra/dt)), max(1, int(math.Ceil(ra/dt)))
				}
				if from >= n {
					continue
				}
				end := min(from+steps, n)
				diff[next][from] += rej / float64(steps)
				diff[next][end] -= rej / float64(steps)
			}
		}
		if connected >= m.Devices-0.5 {
			return t + m.CatchUpSecs, peakAttempts
		}
	}
	return horizon, peakAttempts
}

func spreadUniform(s []float64, from int, width, total, dt float64) {
	steps := max(1, int(math.Ceil(width/dt)))
	for k := 0; k < steps && from+k < len(s); k++ {
		s[from+k] += total / float64(steps)
	}
}

// spreadConv spreads total over the sum of U(0, a) and U(0, b): a trapezoid
// (a difference array: each start step adds its share to the next b/dt steps).
func spreadConv(s []float64, total, a, b, dt float64) {
	na, nb := max(1, int(math.Ceil(a/dt))), max(1, int(math.Ceil(b/dt)))
	w := total / float64(na) / float64(nb)
	diff := make([]float64, len(s)+1)
	for i := 0; i < na && i < len(s); i++ {
		diff[i] += w
		diff[min(i+nb, len(s))] -= w
	}
	run := 0.0
	for i := range s {
		run += diff[i]
		s[i] += run
	}
}
