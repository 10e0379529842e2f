package watermilloutbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestMeasureBlockedKeys measures BlockedKeys, Stats and the backlog
// estimate on 1,000,000 pending rows (1,000 keys of 1,000 rows, the heads
// of 200 keys backing off). It takes minutes, so it runs only with
// OUTBOX_MEASURE=1; the figures are in docs/operating.md.
func TestMeasureBlockedKeys(t *testing.T) {
	if os.Getenv("OUTBOX_MEASURE") != "1" {
		t.Skip("set OUTBOX_MEASURE=1 to measure BlockedKeys on 1,000,000 rows")
	}
	for _, tc := range []struct {
		name    string
		dialect outbox.Dialect
		open    func(testing.TB) *sql.DB
		seed    string // inserts 100,000 rows over keys k000..k999
		block   string // makes the heads of 200 keys wait
	}{
		{"postgres", outbox.PostgreSQL, testenv.Postgres,
			`INSERT INTO %[1]s (uuid, topic, partition_key, payload, metadata) SELECT gen_random_uuid()::text, 'orders', 'k' || lpad((g %% 1000)::text, 3, '0'), convert_to(repeat('x', 100), 'UTF8'), '{}' FROM generate_series(1, 100000) g`,
			`UPDATE %[1]s SET waiting = 1, attempts = 1, available_at = now() + interval '1 hour', last_error = 'boom' WHERE id IN (SELECT min(id) FROM %[1]s GROUP BY partition_key ORDER BY partition_key LIMIT 200)`},
		{"mysql", outbox.MySQL, testenv.MySQL,
			`INSERT INTO %[1]s (uuid, topic, partition_key, payload, metadata) SELECT UUID(), 'orders', CONCAT('k', LPAD(MOD(seq, 1000), 3, '0')), REPEAT('x', 100), '{}' FROM seq_1_to_100000`,
			`UPDATE %[1]s t JOIN (SELECT min(id) id FROM %[1]s GROUP BY partition_key ORDER BY partition_key LIMIT 200) h ON t.id = h.id SET t.waiting = 1, t.attempts = 1, t.available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, t.last_error = 'boom'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := tc.open(t)
			store := newStore(t, db, tc.dialect, config.Config{})
			table := store.Config().Table
			ctx := context.Background()
			for range 10 {
				_, err := db.Exec(sprintf(tc.seed, table))
				require.NoError(t, err)
			}
			_, err := db.Exec(sprintf(tc.block, table))
			require.NoError(t, err)
			if tc.dialect == outbox.PostgreSQL {
				_, err = db.Exec(`VACUUM ANALYZE ` + table)
			} else {
				_, err = db.Exec(`ANALYZE TABLE ` + table)
			}
			require.NoError(t, err)
			measure := func(what string, fn func()) {
				fn() // warm
				const runs = 5
				start := time.Now()
				for range runs {
					fn()
				}
				t.Logf("%s: %v a call", what, time.Since(start)/runs)
			}
			measure("BlockedKeys, page of 100 (each with 999 behind, counted to 1,000)", func() {
				page, err := store.BlockedKeys(ctx, outbox.BlockedQuery{Limit: 100})
				require.NoError(t, err)
				require.Len(t, page, 100)
				require.Equal(t, 999, page[0].Behind)
			})
			measure("BlockedKeys, all 200 (page of 500)", func() {
				page, err := store.BlockedKeys(ctx, outbox.BlockedQuery{Limit: 500})
				require.NoError(t, err)
				require.Len(t, page, 200)
			})
			var st outbox.Stats
			measure("Stats with the estimate", func() {
				st, err = store.Stats(ctx)
				require.NoError(t, err)
			})
			exact := func() int64 {
				var n int64
				require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table+` WHERE state = 'pending'`).Scan(&n))
				return n
			}
			n := exact()
			t.Logf("estimate after ANALYZE: %d for %d rows (%+.1f %%)", st.Topics[0].BacklogEstimate, n, 100*float64(st.Topics[0].BacklogEstimate-n)/float64(n))
			for range 2 {
				_, err := db.Exec(sprintf(tc.seed, table))
				require.NoError(t, err)
			}
			st, err = store.Stats(ctx)
			require.NoError(t, err)
			n = exact()
			t.Logf("estimate 200,000 rows later, before autovacuum's ANALYZE: %d for %d rows (%+.1f %%)", st.Topics[0].BacklogEstimate, n, 100*float64(st.Topics[0].BacklogEstimate-n)/float64(n))
		})
	}
}

func sprintf(format, table string) string { return fmt.Sprintf(format, table) }

// TestStatsEstimatesALargeBacklog: past StatsLimit, Stats adds the
// planner's estimate of the backlog (PostgreSQL, MariaDB); SQLite has none.
func TestStatsEstimatesALargeBacklog(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		dialect outbox.Dialect
		open    func(testing.TB) *sql.DB
		analyze string
	}{
		{"postgres", outbox.PostgreSQL, testenv.Postgres, "ANALYZE "},
		{"mysql", outbox.MySQL, testenv.MySQL, "ANALYZE TABLE "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := tc.open(t)
			store := newStore(t, db, tc.dialect, config.Config{})
			table := store.Config().Table
			bulkInsert(t, db, tc.dialect, table, "'big'", "NULL", 20000)
			bulkInsert(t, db, tc.dialect, table, "'small'", "NULL", 10)
			_, err := db.Exec(tc.analyze + table)
			require.NoError(t, err)
			st, err := store.Stats(context.Background())
			require.NoError(t, err)
			require.Len(t, st.Topics, 2)
			big, small := st.Topics[0], st.Topics[1]
			require.True(t, big.BacklogCapped)
			require.Equal(t, outbox.StatsLimit, big.Pending, "the count stops at the limit")
			require.GreaterOrEqual(t, big.BacklogEstimate, int64(8000), "an estimate of 20,000")
			require.LessOrEqual(t, big.BacklogEstimate, int64(40000), "an estimate of 20,000")
			require.Zero(t, small.BacklogEstimate, "exact counts need no estimate")
		})
	}
}
