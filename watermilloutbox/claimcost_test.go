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

// A claim's reads follow the rows it returns, not the rows it passes over:
// with 50,000 rows queued behind a stuck key's head, or 50,000 rows backing
// off, a claim reads about what it reads with 1,000. (The claim that walked
// the pending rows in id order read every one of them; with 100,000 behind
// a stuck head it took over a second.) The figures are the database's own
// read counters, not times, so the test does not depend on the machine.
func TestClaimReadsFollowItsWork(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		dialect outbox.Dialect
		open    func(testing.TB) *sql.DB
	}{
		{"postgres", outbox.PostgreSQL, testenv.Postgres},
		{"mysql", outbox.MySQL, testenv.MySQL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := tc.open(t)
			stuck := func(tail int) int64 {
				store := newStore(t, db, tc.dialect, config.Config{})
				table := store.Config().Table
				bulkInsert(t, db, tc.dialect, table, "'t'", "'aaa'", tail+1)
				for k := range 20 {
					bulkInsert(t, db, tc.dialect, table, "'t'", fmt.Sprintf("'k%02d'", k), 5)
				}
				bulkInsert(t, db, tc.dialect, table, "'t'", "NULL", 50)
				c, err := store.Claim(context.Background(), relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
				require.NoError(t, err)
				require.Len(t, c.Rows, 1)
				require.Equal(t, "aaa", c.Rows[0].PartitionKey)
				_, err = store.RecordFailure(context.Background(), c.Token, c.Rows[0].ID, "poison", time.Hour)
				require.NoError(t, err)
				cost, err := outbox.ClaimReadCost(context.Background(), store, relaystore.ClaimRequest{Limit: 100, Lease: time.Minute, Ordered: true})
				require.NoError(t, err)
				return cost
			}
			waiting := func(n int) int64 {
				store := newStore(t, db, tc.dialect, config.Config{})
				table := store.Config().Table
				// Written as RecordFailure leaves them. (Rows that became
				// waiting by an UPDATE leave dead entries in the claim's
				// index on PostgreSQL until vacuum removes them: read once
				// with their heap rows, then at index-page cost, about 300
				// entries a page.)
				bulkInsert(t, db, tc.dialect, table, "'failing'", "NULL", n, waitingColumns[tc.dialect])
				bulkInsert(t, db, tc.dialect, table, "'t'", "NULL", 50)
				cost, err := outbox.ClaimReadCost(context.Background(), store, relaystore.ClaimRequest{Limit: 100, Lease: time.Minute})
				require.NoError(t, err)
				return cost
			}
			short, long := stuck(1000), stuck(50000)
			t.Logf("stuck key: reads with a tail of 1,000: %d, of 50,000: %d", short, long)
			require.LessOrEqual(t, long, short*3/2+50, "a stuck key's tail is not read")
			short, long = waiting(1000), waiting(50000)
			t.Logf("waiting rows: reads with 1,000: %d, with 50,000: %d", short, long)
			require.LessOrEqual(t, long, short*3/2+50, "rows backing off are not read")
		})
	}
}

// waitingColumns makes bulkInsert write rows backing off for an hour.
var waitingColumns = map[outbox.Dialect][2]string{
	outbox.PostgreSQL: {"waiting, attempts, available_at", "1, 1, now() + interval '1 hour'"},
	outbox.MySQL:      {"waiting, attempts, available_at", "1, 1, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR"},
}

// bulkInsert writes n rows of topic and key (SQL literals) into table in one
// statement, with the values of more columns if given.
func bulkInsert(t *testing.T, db *sql.DB, dialect outbox.Dialect, table, topic, key string, n int, more ...[2]string) {
	t.Helper()
	cols, vals := "", ""
	for _, m := range more {
		cols, vals = cols+", "+m[0], vals+", "+m[1]
	}
	var q string
	switch dialect {
	case outbox.PostgreSQL:
		q = `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata` + cols + `)
SELECT gen_random_uuid()::text, ` + topic + `, ` + key + `, convert_to(repeat('x', 100), 'UTF8'), '{}'` + vals + ` FROM generate_series(1, ` + fmt.Sprint(n) + `)`
	default:
		digits := `(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5
UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)`
		q = `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata` + cols + `)
SELECT UUID(), ` + topic + `, ` + key + `, REPEAT('x', 100), '{}'` + vals + ` FROM ` +
			digits + ` a, ` + digits + ` b, ` + digits + ` c, ` + digits + ` d, ` + digits + ` e
WHERE a.d + 10 * b.d + 100 * c.d + 1000 * d.d + 10000 * e.d < ` + fmt.Sprint(n)
	}
	_, err := db.Exec(q)
	require.NoError(t, err)
}
