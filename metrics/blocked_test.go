package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/metrics"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestBlockedKeyGauges: a key whose head backs off shows in
// outbox_blocked_keys and its age in outbox_oldest_blocked_age_seconds
// within one refresh; the backlog gauge counts the topic's undelivered
// rows; once the table empties the gauges read 0 instead of vanishing.
func TestBlockedKeyGauges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newOutbox(t, fastConfig())
	msgs := make([]*message.Message, 4)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("x"))
		msgs[i].Metadata.Set(outbox.PartitionKeyMetadataKey, []string{"k1", "k1", "k2", "k3"}[i])
	}
	require.NoError(t, e.pub.Publish("a", msgs...))
	c, err := e.store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.NoError(t, err)
	var release []int64
	for _, r := range c.Rows {
		if r.PartitionKey == "k1" || r.PartitionKey == "k2" {
			if r.ID == c.Rows[0].ID || r.PartitionKey == "k2" {
				_, err := e.store.RecordFailure(ctx, c.Token, r.ID, "boom", time.Hour)
				require.NoError(t, err)
				continue
			}
		}
		release = append(release, r.ID)
	}
	_, err = e.store.Release(ctx, c.Token, release)
	require.NoError(t, err)

	m, err := metrics.New(e.store, metrics.Config{RefreshInterval: time.Nanosecond}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	a := labels{"topic": "a"}
	require.Equal(t, 2.0, sample(t, reg, "outbox_blocked_keys", a), "k1 and k2")
	age := sample(t, reg, "outbox_oldest_blocked_age_seconds", a)
	require.Positive(t, age)
	require.Less(t, age, 60.0)
	require.Equal(t, 4.0, sample(t, reg, "outbox_backlog", a))
	require.Zero(t, sample(t, reg, "outbox_stats_capped", labels{"group": "blocked"}))

	_, err = e.db.Exec(`DELETE FROM ` + e.table)
	require.NoError(t, err)
	for _, name := range []string{"outbox_pending", "outbox_waiting", "outbox_backlog", "outbox_blocked_keys", "outbox_oldest_blocked_age_seconds", "outbox_oldest_pending_age_seconds"} {
		require.Zero(t, sample(t, reg, name, a), "%s reads 0 once the table is empty, not absent", name)
	}
}
