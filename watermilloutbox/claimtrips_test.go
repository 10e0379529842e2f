package watermilloutbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// On a pgx connection a claim is two round trips: BEGIN with the
// statements it opens with (the promotion, the keyless rows, the first
// visit of the keyed rows), then the take with COMMIT. A step that missed
// the result sent ahead for it would ask the database again: the claim
// still works, one round trip slower per miss. So the round trips are
// counted, on a direct connection (named statements) and through
// PgBouncer (unnamed ones), over a pgx pool and over database/sql.
func TestPipelinedClaimTakesTwoRoundTrips(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		store func(t *testing.T, cfg config.Config) *outbox.SQLStore
	}{
		{"pgx pool", func(t *testing.T, cfg config.Config) *outbox.SQLStore {
			s, err := outbox.NewPgxStore(testenv.PostgresPool(t), outbox.PgxStoreConfig{Outbox: cfg}, nil)
			require.NoError(t, err)
			return s
		}},
		{"database/sql", func(t *testing.T, cfg config.Config) *outbox.SQLStore {
			s, err := outbox.NewSQLStore(testenv.Postgres(t), outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, nil)
			require.NoError(t, err)
			return s
		}},
		{"pgbouncer", func(t *testing.T, cfg config.Config) *outbox.SQLStore {
			s, err := outbox.NewPgxStore(testenv.PgBouncerPool(t), outbox.PgxStoreConfig{Outbox: cfg}, nil)
			require.NoError(t, err)
			return s
		}},
	} {
		for _, sc := range []struct {
			name    string
			keys    []string // one row each
			run     int      // rows of key "r", for a claim that reads the key's run
			ordered bool
			rows    int // rows claimed
			trips   int
		}{
			// A claim of ten takes one row a key: no second read.
			{name: "ordered", keys: strings.Split("abcdefghij", ""), ordered: true, rows: 10, trips: 2},
			{name: "unordered", keys: strings.Split("abcdefghij", ""), rows: 10, trips: 2},
			{name: "nothing due", ordered: true, trips: 2},
			// A key with rows for more than one of the claim's share: its
			// run is read in a round trip of its own.
			{name: "ordered run", run: 8, ordered: true, rows: 10, trips: 3},
		} {
			t.Run(c.name+"/"+sc.name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				db := testenv.Postgres(t)
				table := migratedTable(t, db, outbox.PostgreSQL)
				store := c.store(t, config.Config{Table: table})
				trips := make(chan int, 1)
				outbox.SetClaimTripsHook(store, func(n int) { trips <- n })
				if sc.keys != nil || sc.run > 0 {
					bulkInsert(t, db, outbox.PostgreSQL, table, "'t'", "NULL", 5)
				}
				for _, k := range sc.keys {
					bulkInsert(t, db, outbox.PostgreSQL, table, "'t'", "'"+k+"'", 1)
				}
				if sc.run > 0 {
					bulkInsert(t, db, outbox.PostgreSQL, table, "'t'", "'r'", sc.run)
				}
				got, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Minute, Relay: "r1", Ordered: sc.ordered})
				require.NoError(t, err)
				require.Len(t, got.Rows, sc.rows)
				select {
				case n := <-trips:
					if c.name == "pgbouncer" && n == sc.trips+2 {
						// The server connection had not prepared the
						// claim's statements: a ROLLBACK and the first
						// batch again (TestPooledClaimPreparesOnce).
						n = sc.trips
					}
					require.Equal(t, sc.trips, n, "round trips")
				case <-time.After(10 * time.Second):
					t.Fatal("the claim did not run pipelined")
				}
			})
		}
	}
}
