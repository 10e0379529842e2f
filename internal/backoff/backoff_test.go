package backoff_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
)

func TestBackoffBounds(t *testing.T) {
	t.Parallel()

	const lo, hi = time.Second, time.Minute
	attempts := []int{math.MinInt, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 62, 63, 64, 1000, math.MaxInt}
	prevCeiling := time.Duration(0)
	for _, attempt := range attempts {
		// The cap without jitter: lo·2^(attempt-1), at most hi.
		ceiling := lo
		for i := 1; i < attempt && ceiling < hi; i++ {
			ceiling = min(2*ceiling, hi)
		}
		require.GreaterOrEqual(t, ceiling, prevCeiling, "caps never shrink as attempts grow")
		prevCeiling = ceiling

		for range 200 {
			d := backoff.Jittered(attempt, lo, hi)
			require.GreaterOrEqual(t, d, lo/2, "attempt %d", attempt)
			require.LessOrEqual(t, d, ceiling, "attempt %d", attempt)
			// Equal jitter: never below half the cap.
			require.GreaterOrEqual(t, d, ceiling/2, "attempt %d", attempt)
		}
	}
	require.Equal(t, hi, prevCeiling, "the cap reaches hi")
}

func TestBackoffHugeValuesDoNotOverflow(t *testing.T) {
	t.Parallel()

	huge := time.Duration(math.MaxInt64)
	for range 100 {
		d := backoff.Jittered(math.MaxInt, time.Nanosecond, huge)
		require.GreaterOrEqual(t, d, huge/2)
		require.LessOrEqual(t, d, huge)

		d = backoff.Jittered(math.MaxInt, huge/3, huge)
		require.GreaterOrEqual(t, d, huge/2)

		d = backoff.Jittered(64, time.Hour, 1000*time.Hour)
		require.GreaterOrEqual(t, d, 500*time.Hour)
		require.LessOrEqual(t, d, 1000*time.Hour)
	}
}

func TestBackoffEdgeCases(t *testing.T) {
	t.Parallel()

	require.Zero(t, backoff.Jittered(3, 0, time.Second), "zero min")
	require.Zero(t, backoff.Jittered(3, -time.Second, time.Second), "negative min")

	// max below min counts as min.
	d := backoff.Jittered(10, time.Second, time.Millisecond)
	require.GreaterOrEqual(t, d, time.Second/2)
	require.LessOrEqual(t, d, time.Second)

	// A 1ns backoff cannot be halved; it stays within [0, 1ns].
	require.LessOrEqual(t, backoff.Jittered(1, time.Nanosecond, time.Nanosecond), time.Nanosecond)
}
