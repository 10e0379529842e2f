package watermilloutbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// applyDDL creates table as a migration tool would: the pasted DDL, run
// statement by statement, never through the store.
func applyDDL(t *testing.T, exec func(q string) error, d outbox.Dialect, table string) {
	t.Helper()
	ddl, err := outbox.DDL(d, table)
	require.NoError(t, err)
	for _, q := range strings.Split(ddl, ";\n") {
		if strings.TrimSpace(q) != "" {
			require.NoError(t, exec(q))
		}
	}
}

// TestFirstPublishWithAPoolOfOne: with a pool of one connection and the
// table made from DDL (so the store never touched the database), the first
// Publish in a transaction returns: it needs no connection but the one the
// transaction holds. The context bounds what would otherwise hang forever.
func TestFirstPublishWithAPoolOfOne(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			db := b.open(t)
			table := testenv.TableName(t)
			applyDDL(t, func(q string) error { _, err := db.Exec(q); return err }, b.dialect, table)
			t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
			db.SetMaxOpenConns(1)

			store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: b.dialect, Outbox: config.Config{Table: table}}, nil)
			require.NoError(t, err)
			pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
			require.NoError(t, err)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback() //nolint:errcheck // frees the one connection when the test fails
			msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
			msg.SetContext(ctx)
			require.NoError(t, pub.WithTx(tx).Publish("orders", msg), "the first Publish with a pool of one")
			require.NoError(t, tx.Commit())
			require.Equal(t, 1, countRows(t, db, table))
		})
	}
	t.Run("pgx", func(t *testing.T) {
		t.Parallel()
		cfg, err := pgxpool.ParseConfig(testenv.PostgresDSN())
		require.NoError(t, err)
		cfg.MaxConns = 1
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		table := testenv.TableName(t)
		applyDDL(t, func(q string) error { _, err := pool.Exec(context.Background(), q); return err }, outbox.PostgreSQL, table)
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) })

		store, err := outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: config.Config{Table: table}}, nil)
		require.NoError(t, err)
		pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
		require.NoError(t, err)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.Background()) //nolint:errcheck // frees the one connection when the test fails
		msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
		msg.SetContext(ctx)
		require.NoError(t, pub.WithPgxTx(tx).Publish("orders", msg), "the first Publish with a pool of one")
		require.NoError(t, tx.Commit(ctx))
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n))
		require.Equal(t, 1, n)
	})
}
