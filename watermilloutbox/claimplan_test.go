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

// A claim must walk its indexes in order and stop at the limit whatever
// the statistics say. A queue table's are nearly always stale: here the
// table has never been analyzed, and an earlier claim query was planned as
// a bitmap scan of every pending row and a sort, with the ordered filter
// run on each: 200 ms per claim instead of 4 ms on a 20,000-row backlog.
func TestPostgresClaimWalksItsIndexesDespiteStaleStatistics(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	ctx := context.Background()
	table := migratedTable(t, db, outbox.PostgreSQL)

	exec := func(q string, args ...any) {
		t.Helper()
		_, err := db.ExecContext(ctx, q, args...)
		require.NoError(t, err)
	}
	insert := func(n int) {
		exec(`INSERT INTO `+table+` (uuid, topic, partition_key, payload, metadata)
SELECT gen_random_uuid()::text, 't', 'k' || (g % 1000), convert_to(repeat('x', 256), 'UTF8'), '{}'
FROM generate_series(1, $1) g`, n)
	}
	exec(`ALTER TABLE ` + table + ` SET (autovacuum_enabled = false)`)
	insert(20000)

	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: table}}, nil)
	require.NoError(t, err)
	for _, ordered := range []bool{false, true} {
		req := relaystore.ClaimRequest{Topics: relaystore.TopicFilter{Names: []string{"t"}}, Limit: 100, Lease: time.Minute, Ordered: ordered}
		unprepared, err := outbox.ExplainPostgresClaim(ctx, store, req, false)
		require.NoError(t, err)
		t.Logf("ordered=%v, plan the statistics suggest:\n%s", ordered, unprepared)

		plan, err := outbox.ExplainPostgresClaim(ctx, store, req, true)
		require.NoError(t, err)
		require.Contains(t, plan, "Index Scan using "+table+"_unkeyed_idx", "ordered=%v:\n%s", ordered, plan)
		require.Contains(t, plan, table+"_keyed_idx", "ordered=%v:\n%s", ordered, plan)
		require.NotContains(t, plan, "Bitmap", "ordered=%v:\n%s", ordered, plan)
		// The walk sorts the keys it visited (at most its budget), nothing else.
		require.Equal(t, strings.Count(plan, "Sort Key: k.n"), strings.Count(plan, "Sort Key:"), "ordered=%v:\n%s", ordered, plan)
	}
}
