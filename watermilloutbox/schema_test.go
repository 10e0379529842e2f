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
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

func TestValidateTableName(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"outbox", "public.outbox", "_x1", "Order"} {
		require.True(t, sqlident.ValidTable(ok), ok)
		_, err := outbox.DDL(outbox.PostgreSQL, ok)
		require.NoError(t, err, ok)
	}
	for _, bad := range []string{"", "x; DROP TABLE y", `"a"`, "a b", "a.b.c", "1a", "a-b", "a.", ".a", "a`b", "a'b",
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij"} {
		require.False(t, sqlident.ValidTable(bad), bad)
		_, err := outbox.DDL(outbox.PostgreSQL, bad)
		require.ErrorIs(t, err, outbox.ErrInvalidTableName, bad)
	}
}

func TestDDLRejectsBadInputBeforeSQL(t *testing.T) {
	t.Parallel()
	_, err := outbox.DDL(outbox.PostgreSQL, "x; DROP TABLE y")
	require.ErrorIs(t, err, outbox.ErrInvalidTableName)
	_, err = outbox.DDL("oracle", "x")
	require.ErrorIs(t, err, outbox.ErrUnknownDialect)
	// nil db: the name is checked first, so no SQL could have run.
	_, err = outbox.NewSQLStore(nil, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: `"a"`}}, nil)
	require.Error(t, err)

	for _, d := range []outbox.Dialect{outbox.PostgreSQL, outbox.MySQL, outbox.SQLite} {
		ddl, err := outbox.DDL(d, "app.outbox")
		require.NoError(t, err)
		require.Contains(t, ddl, "CREATE TABLE IF NOT EXISTS")
	}
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	ctx := context.Background()

	table := testenv.TableName(t)
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table + `_relays`) })
	require.NoError(t, migrate(ctx, db, outbox.PostgreSQL, table))
	require.NoError(t, migrate(ctx, db, outbox.PostgreSQL, table))

	concurrent := testenv.TableName(t)
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + concurrent) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + concurrent + `_relays`) })
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = migrate(ctx, db, outbox.PostgreSQL, concurrent)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM pg_indexes WHERE tablename = $1`, concurrent).Scan(&n))
	require.Equal(t, 9, n, "primary key and eight partial indexes")
}

// The claim updates stay HOT only with room on the page (see ddl); a user
// who later sets another fillfactor keeps it across Migrate.
func TestMigratePostgresFillfactor(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	ctx := context.Background()
	table := migratedTable(t, db, outbox.PostgreSQL)
	fillfactor := func() string {
		var opts string
		require.NoError(t, db.QueryRow(`SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = $1::regclass`, table).Scan(&opts))
		return opts
	}

	const made = "autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=1000,autovacuum_vacuum_cost_delay=0"
	require.Equal(t, "fillfactor=50,"+made, fillfactor())

	_, err := db.Exec(`ALTER TABLE ` + table + ` SET (fillfactor = 80)`)
	require.NoError(t, err)
	require.NoError(t, migrate(ctx, db, outbox.PostgreSQL, table))
	require.Equal(t, made+",fillfactor=80", fillfactor())
}

func TestMigrateSchemaQualifiedTable(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	schema := testenv.TableName(t)
	_, err := db.Exec(`CREATE SCHEMA IF NOT EXISTS ` + schema)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = db.Exec(`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`) })
	require.NoError(t, migrate(context.Background(), db, outbox.PostgreSQL, schema+".order"))
	_, err = db.Exec(`SELECT 1 FROM ` + schema + `."order"`)
	require.NoError(t, err)
}

// A table whose autovacuum is off is vacuumed by Maintain, at most once a
// minute; with autovacuum on, Maintain leaves it to autovacuum.
func TestMaintainVacuumsWhenAutovacuumIsOff(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	ctx := context.Background()
	store := newStore(t, db, outbox.PostgreSQL, config.Config{})
	table := store.Config().Table
	vacuums := func() int {
		var n int
		require.NoError(t, db.QueryRow(`SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = $1::regclass`, table).Scan(&n))
		return n
	}
	var global bool
	require.NoError(t, db.QueryRow(`SELECT current_setting('autovacuum')::bool`).Scan(&global))
	if global {
		// The server's autovacuum is on: turn it off for this table.
		_, err := db.Exec(`ALTER TABLE ` + table + ` SET (autovacuum_enabled = false)`)
		require.NoError(t, err)
	}
	before := vacuums()
	require.NoError(t, store.Maintain(ctx))
	require.NoError(t, store.Maintain(ctx), "the second call within a minute does nothing")
	// The statistics of this backend's vacuum reach pg_stat_user_tables
	// when it reports them: poll.
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting && vacuums() == before; {
		select {
		case <-deadline:
			waiting = false
		case <-tick.C:
		}
	}
	require.Equal(t, before+1, vacuums(), "one vacuum")
}

// A table named by a reserved word migrates and works on SQLite: every
// statement quotes the name, the index DDL's ON clause included.
func TestMigrateReservedWordTableOnSQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.SQLite(t)
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.SQLite, Outbox: config.Config{Table: "order"}}, nil)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(ctx))
	require.NoError(t, store.Migrate(ctx), "idempotent")
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	require.NoError(t, pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Minute, Ordered: true})
	require.NoError(t, err)
	require.Len(t, c.Rows, 1)
}
