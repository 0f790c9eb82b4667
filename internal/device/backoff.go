package device

import "time"

// Backoff is the delay before reconnect attempt k (k = 0 for the first retry):
// full jitter, U(0, min(cap, base*2^k)), with u a uniform draw in [0, 1). A pure
// function so the distribution is tested without sleeping.
func Backoff(k int, base, cap time.Duration, u float64) time.Duration {
	return time.Duration(u * float64(BackoffWindow(k, base, cap)))
}

// BackoffWindow is min(cap, base*2^k), the upper end of attempt k's window.
// base*2^k is never computed past cap: shifted far enough it overflows (500ms
// << 35 does), and a negative window would make every retry immediate.
func BackoffWindow(k int, base, cap time.Duration) time.Duration {
	if k < 0 {
		k = 0
	}
	if k >= 62 || base > cap>>k {
		return cap
	}
	return min(cap, base<<k)
}
