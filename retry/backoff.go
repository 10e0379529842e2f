package retry

import (
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
)

// Backoff returns how long to wait after the attempt-th consecutive failure
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
// stops at the cap. The relay uses the same curve for its database retries.
func Backoff(attempt int, min, max time.Duration) time.Duration {
	return backoff.Jittered(attempt, min, max)
}
