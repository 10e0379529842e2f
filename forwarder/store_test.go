package forwarder_test

// The Store contract itself (fencing, leases, the ordering filter, dead
// rows, requeue) is tested by package watermilloutbox/storetest, for every
// dialect; here is what the relay makes of it.

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestClaimExpiryRecoversCrashedRelay: rows claimed by a relay that died
// (it never acks, never releases) reach a live relay once the lease expires.
func TestClaimExpiryRecoversCrashedRelay(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		ctx := context.Background()
		msgs := e.publish(t, "t", 5, func(i int) string { return "same-key" })
		c, err := e.store.Claim(ctx, relaystore.ClaimRequest{Limit: 5, Lease: time.Second, Ordered: true})
		rows := c.Rows
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
