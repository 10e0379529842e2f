package dburl_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
)

// TestOpenRelayEndsIdleTransactions: on MariaDB a relay's own connection
// has idle_transaction_timeout set from the relay timeout, so a
// transaction it leaves idle (a relay paused inside its claim) is ended by
// the server, with its row locks, instead of lasting until it resumes.
func TestOpenRelayEndsIdleTransactions(t *testing.T) {
	t.Parallel()
	watch := testenv.MySQL(t) // skips, or fails under OUTBOX_REQUIRE_SERVICES, without the service
	d, err := dburl.Parse(testenv.MySQLDSN())
	require.NoError(t, err)
	require.Equal(t, 2, dburl.RelaySessionTimeout(1500*time.Millisecond), "whole seconds, rounded up")
	require.Equal(t, 1, dburl.RelaySessionTimeout(100*time.Millisecond))

	db, err := d.OpenRelay(time.Second)
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	var timeout, id int64
	require.NoError(t, conn.QueryRowContext(ctx, `SELECT @@session.idle_transaction_timeout, CONNECTION_ID()`).Scan(&timeout, &id))
	require.Equal(t, int64(1), timeout)

	tx, err := conn.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, `SELECT 1`)
	require.NoError(t, err)
	// Idle inside the transaction, as a paused relay: the server ends it.
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		require.NoError(t, watch.QueryRow(`SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = ?`, id).Scan(&n))
		if n == 0 {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the server kept the idle transaction's connection for 30s")
		}
	}
}
