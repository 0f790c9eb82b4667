package prefetch

import "time"

// JitteredTTL is base x U(1-j, 1+j) for a uniform draw u in [0, 1): with j = 0.5
// the expiries of a fill at one instant spread flat over [T/2, 3T/2], so the first
// refresh wave is no higher than the steady state N/T (see shared loadgen notes).
func JitteredTTL(base time.Duration, j, u float64) time.Duration {
	return time.Duration(float64(base) * (1 - j + 2*j*u))
}

// RefreshAfter is ttl x U(lo, hi): when a device should prefetch again, always
// before its copy expires when hi < 1.
func RefreshAfter(ttl time.Duration, lo, hi, u float64) time.Duration {
	return time.Duration(float64(ttl) * (lo + (hi-lo)*u))
}

// seconds rounds d to whole seconds, at least 1.
func seconds(d time.Duration) int {
	return max(1, int((d+time.Second/2)/time.Second))
}
