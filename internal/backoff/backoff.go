// Package backoff holds the one backoff curve of the outbox: the relay's
// database retries, the LISTEN reconnects, a failed row's retry delay,
// the pause while the destination is unavailable and the command's own
// retries all use it, and Sleep, the one context-aware wait.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Database retries: every claim, ack, failure or renewal write the relay
// retries, and every LISTEN reconnect, waits Jittered(n, DBMin, DBMax)
// after its n-th consecutive failure.
const (
	DBMin = 50 * time.Millisecond
	DBMax = 10 * time.Second
)

// Jittered returns how long to wait after the attempt-th consecutive failure
// (1-based): min·2^(attempt-1), capped at max, with "equal jitter": half of
// that is fixed and the other half random, so the result d always satisfies
//
//	min/2 <= d <= min(max, min·2^(attempt-1))
//
// The fixed half keeps retries from hammering a recovering destination; the
// random half spreads out relays and rows that failed together.
//
// An attempt below 1 counts as 1, a max below min counts as min, and a min
// of zero or less returns 0. Huge attempts do not overflow: the doubling
// stops at the cap.
func Jittered(attempt int, min, max time.Duration) time.Duration {
	if min <= 0 {
		return 0
	}
	if max < min {
		max = min
	}
	d := min
	for i := 1; i < attempt && d < max; i++ {
		if d > max/2 {
			d = max
			break
		}
		d *= 2
	}
	half := d / 2
	// Int64N(n) is in [0, n): d-half+1 makes d itself reachable.
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

// Sleep waits d, or until ctx is done, and reports whether ctx is still
// live; a d of zero or less does not wait.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
