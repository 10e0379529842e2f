package forwarder_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestStoreFencing: a relay whose lease expired and whose rows another relay
// re-claimed cannot write their outcome.
func TestStoreFencing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		ctx := context.Background()
		msgs := e.publish(t, "t", 3, nil)

		stale, rows, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 10, Lease: time.Second})
		require.NoError(t, err)
		require.Len(t, rows, 3)
		require.Equal(t, msgs[0].UUID, rows[0].UUID, "rows come in id order")
		ids := []int64{rows[0].ID, rows[1].ID, rows[2].ID}

		// Leased: nobody else gets them.
		_, none, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 10, Lease: time.Second})
		require.NoError(t, err)
		require.Empty(t, none)

		var fresh string
		var again []outbox.Row
		waitFor(t, 10*time.Second, "lease expiry", func() bool {
			fresh, again, err = e.store.Claim(ctx, outbox.ClaimRequest{Limit: 10, Lease: time.Minute})
			require.NoError(t, err)
			return len(again) == 3
		})
		require.NotEqual(t, stale, fresh)

		for _, write := range []func() (int, error){
			func() (int, error) { return e.store.MarkPublished(ctx, stale, ids, false) },
			func() (int, error) { return e.store.RecordFailure(ctx, stale, ids[0], "x", 0) },
			func() (int, error) { return e.store.MarkDead(ctx, stale, ids[1], "x") },
			func() (int, error) { return e.store.Release(ctx, stale, ids) },
			func() (int, error) { return e.store.Renew(ctx, stale, ids, time.Hour) },
		} {
			n, err := write()
			require.NoError(t, err)
			require.Zero(t, n, "a stale token changes nothing")
		}
		require.Equal(t, 3, e.count(t, "state = 'pending' AND attempts = 0 AND claim_token IS NOT NULL"))

		n, err := e.store.MarkPublished(ctx, fresh, ids, true)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		require.Equal(t, 3, e.count(t, "state = 'published' AND published_at IS NOT NULL"))
		purged, err := e.store.PurgePublished(ctx, 0, 2)
		require.NoError(t, err)
		require.Equal(t, 2, purged, "purge works in bounded batches")
	})
}

// TestStoreNackReleasesAtOnce: a failure makes the row due after its
// backoff, not after the lease.
func TestStoreNackReleasesAtOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		ctx := context.Background()
		e.publish(t, "t", 1, nil)
		token, rows, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 1, Lease: time.Hour})
		require.NoError(t, err)
		require.Len(t, rows, 1)
		n, err := e.store.RecordFailure(ctx, token, rows[0].ID, "boom", 0)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		_, again, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 1, Lease: time.Hour})
		require.NoError(t, err)
		require.Len(t, again, 1, "claimable again at once despite the hour-long lease")
		require.Equal(t, 1, again[0].Attempts)

		// A long backoff keeps it back.
		n, err = e.store.RecordFailure(ctx, "", again[0].ID, "boom", time.Hour)
		require.NoError(t, err)
		require.Zero(t, n, "the empty token fences too")
	})
}

// TestClaimExpiryRecoversCrashedRelay: rows claimed by a relay that died
// (it never acks, never releases) reach a live relay once the lease expires.
func TestClaimExpiryRecoversCrashedRelay(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		ctx := context.Background()
		msgs := e.publish(t, "t", 5, func(i int) string { return "same-key" })
		_, rows, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 5, Lease: time.Second, Ordered: true})
		require.NoError(t, err)
		require.Len(t, rows, 5, "one key's rows are claimed together")
		// The "crashed" relay is gone. A live one takes over after a second.
		dest := newRecorder()
		runForwarder(t, e.store, dest, forwarder.Config{})
		dest.waitDistinct(t, 5, 30*time.Second)
		for i, r := range dest.snapshot()[:5] {
			require.Equal(t, msgs[i].UUID, r.msg.UUID, "order kept after recovery")
		}
	})
}

// TestOrderedClaimHoldsBackOnlyTheFailingKey: a key whose head is backing off
// is not claimed past; other keys are.
func TestOrderedClaimHoldsBackOnlyTheFailingKey(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		ctx := context.Background()
		e.publish(t, "t", 6, func(i int) string { return []string{"a", "b"}[i%2] })
		token, rows, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
		require.NoError(t, err)
		require.Len(t, rows, 1)
		require.Equal(t, "a", rows[0].PartitionKey)
		_, err = e.store.RecordFailure(ctx, token, rows[0].ID, "boom", time.Hour)
		require.NoError(t, err)

		_, rest, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
		require.NoError(t, err)
		require.Len(t, rest, 3)
		for _, r := range rest {
			require.Equal(t, "b", r.PartitionKey, "key a waits for its head")
		}
		_, unordered, err := e.store.Claim(ctx, outbox.ClaimRequest{Limit: 10, Lease: time.Hour})
		require.NoError(t, err)
		require.Len(t, unordered, 2, "without ordering key a's later rows go")
	})
}
