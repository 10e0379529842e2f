package watermilloutbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestMySQLClaimDoesNotBlockInserts holds a relay's claim transaction open
// (rows locked FOR UPDATE) and checks that the application can still insert
// into the outbox: the claim runs under READ COMMITTED, which takes no gap or
// next-key locks. Under REPEATABLE READ the insert after the last row would
// wait for the claim to commit.
func TestMySQLClaimDoesNotBlockInserts(t *testing.T) {
	t.Parallel()
	db := testenv.MySQL(t)
	ctx := context.Background()
	store := newStore(t, db, outbox.MySQL, config.Config{})
	table := store.Config().Table
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)

	for i := 0; i < 10; i++ {
		require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	}

	inClaim, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock() // also when an assertion below fails
	outbox.SetClaimHook(store, func() {
		close(inClaim)
		<-release
	})
	claimed := make(chan int, 1)
	go func() {
		c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 5, Lease: time.Minute, Ordered: true})
		rows := c.Rows
		if err != nil {
			t.Error(err)
		}
		claimed <- len(rows)
	}()
	select {
	case <-inClaim:
	case <-time.After(10 * time.Second):
		t.Fatal("claim did not start")
	}

	// The claim transaction is open with five rows locked. An application
	// transaction inserting events (and a second claim, skipping the locked
	// rows) must not wait for it.
	insertCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tx, err := db.BeginTx(insertCtx, nil)
	require.NoError(t, err)
	msg := message.NewMessage(watermill.NewUUID(), []byte("during claim"))
	require.NoError(t, pub.WithTx(tx).Publish("t", msg), "insert blocked by the relay's claim")
	require.NoError(t, tx.Commit())
	unblock()
	require.Equal(t, 5, <-claimed)

	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM "+table).Scan(&n))
	require.Equal(t, 11, n)
}
