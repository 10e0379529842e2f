package watermilloutbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestPooledClaimPreparesOnce: behind a pooler the claim prepares its
// statements with SQL PREPARE on the server connection it lands on. On one
// that lacks them the first batch's check fails, and the claim rolls back
// and sends it again after preparing them (two round trips more); one that
// holds them runs the claim in its two round trips; one whose statements
// were deallocated (a pooler's DISCARD ALL) prepares them again. One
// connection stands for the pooler's server connection here, so the test
// knows what it holds.
func TestPooledClaimPreparesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The same claims on a store as behind a pooler and on a direct one,
	// each on a table of its own: the pooled claim takes the direct one's
	// round trips, two more where it prepares.
	type side struct {
		db    *sql.DB
		table string
		store *outbox.SQLStore
		trips chan int
	}
	open := func(pooled bool) side {
		db := testenv.Postgres(t)
		db.SetMaxOpenConns(1)
		table := migratedTable(t, db, outbox.PostgreSQL)
		store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: table}}, nil)
		require.NoError(t, err)
		if pooled {
			outbox.TreatAsPooled(store)
		}
		trips := make(chan int, 1)
		outbox.SetClaimTripsHook(store, func(n int) { trips <- n })
		return side{db, table, store, trips}
	}
	pooled, direct := open(true), open(false)
	claim := func(s side, step string) int {
		bulkInsert(t, s.db, outbox.PostgreSQL, s.table, "'t'", "'k'", 1)
		got, err := s.store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Minute, Relay: "r1", Ordered: true})
		require.NoError(t, err, step)
		require.Len(t, got.Rows, 1, step)
		_, err = s.store.MarkPublished(ctx, got.Token, []int64{got.Rows[0].ID}, false)
		require.NoError(t, err, step)
		select {
		case n := <-s.trips:
			return n
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the claim did not run pipelined", step)
			return 0
		}
	}

	for _, step := range []struct {
		name     string
		reset    bool // DEALLOCATE ALL first
		prepares bool
	}{
		{name: "fresh connection", prepares: true},
		{name: "statements held"},
		{name: "statements held again"},
		{name: "after DEALLOCATE ALL", reset: true, prepares: true},
		{name: "held once more"},
	} {
		if step.reset {
			_, err := pooled.db.ExecContext(ctx, `DEALLOCATE ALL`)
			require.NoError(t, err, step.name)
		}
		want := claim(direct, step.name)
		if step.prepares {
			want += 2
		}
		require.Equal(t, want, claim(pooled, step.name), "%s: round trips", step.name)
	}
	var held int
	require.NoError(t, pooled.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'watermill\_outbox\_%'`).Scan(&held))
	require.Positive(t, held, "the claim's statements stay prepared on the connection")

	// A connection crowded with other stores' statements: the claim that
	// prepares its own deallocates the oldest of the others first.
	_, err := pooled.db.ExecContext(ctx, `DEALLOCATE ALL`)
	require.NoError(t, err)
	for i := range 200 {
		_, err := pooled.db.ExecContext(ctx, fmt.Sprintf(`PREPARE watermill_outbox_other%03d AS SELECT %d`, i, i))
		require.NoError(t, err)
	}
	want := claim(direct, "crowded") + 2
	require.Equal(t, want, claim(pooled, "crowded"), "crowded: round trips")
	var others, newest int
	require.NoError(t, pooled.db.QueryRowContext(ctx, `SELECT count(*), count(*) FILTER (WHERE name >= 'watermill_outbox_other150')
FROM pg_prepared_statements WHERE name LIKE 'watermill\_outbox\_other%'`).Scan(&others, &newest))
	require.LessOrEqual(t, others, 64, "other stores' statements left")
	require.Equal(t, 50, newest, "the newest are kept")
}
