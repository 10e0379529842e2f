package forwarder_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
)

// TestSubscriberBeatsAndLeaves: a subscriber registers in the store's relay
// registry, names itself in the rows it claims, and on Close leaves the
// registry, so that a row it failed to give back is claimable at once.
func TestSubscriberBeatsAndLeaves(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[2])
	e.publish(t, "t", 3, nil)
	sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{}, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, forwarder.AllTopics)
	require.NoError(t, err)
	select {
	case m := <-msgs:
		defer m.Ack()
	case <-time.After(30 * time.Second):
		t.Fatal("no message")
	}
	const now = `CAST(unixepoch('subsec') * 1000000 AS INTEGER)`
	var alive []int64
	waitFor(t, 30*time.Second, "the subscriber to register", func() bool {
		alive, err = queryInts(e.db, `SELECT count(*) FROM `+e.table+`_relays WHERE alive_until >= `+now)
		require.NoError(t, err)
		return alive[0] == 1
	})
	named, err := queryInts(e.db, `SELECT count(*) FROM `+e.table+` WHERE claimed_by = (SELECT id FROM `+e.table+`_relays)`)
	require.NoError(t, err)
	require.Equal(t, int64(3), named[0], "its claims name it")

	require.NoError(t, sub.Close())
	alive, err = queryInts(e.db, `SELECT count(*) FROM `+e.table+`_relays WHERE alive_until >= `+now)
	require.NoError(t, err)
	require.Zero(t, alive[0], "gone once closed")
}
