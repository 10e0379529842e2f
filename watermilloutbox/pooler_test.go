package watermilloutbox_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestPoolerDetected: the store's statements avoid named prepared
// statements until its first use of the pool shows PostgreSQL itself on
// the other end; through PgBouncer they keep avoiding them, over
// database/sql and a pgx pool.
func TestPoolerDetected(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		pooled bool
		sqlDB  func(testing.TB) *sql.DB
		pool   func(testing.TB) *pgxpool.Pool
	}{
		{"direct", false, testenv.Postgres, nil},
		{"direct pgx", false, nil, testenv.PostgresPool},
		{"pgbouncer", true, testenv.PgBouncer, nil},
		{"pgbouncer pgx", true, nil, testenv.PgBouncerPool},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Config{Table: testenv.TableName(t)}
			var store *outbox.SQLStore
			var err error
			if c.pool != nil {
				store, err = outbox.NewPgxStore(c.pool(t), outbox.PgxStoreConfig{Outbox: cfg}, nil)
			} else {
				store, err = outbox.NewSQLStore(c.sqlDB(t), outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, nil)
			}
			require.NoError(t, err)
			require.True(t, outbox.StatementsUnnamed(store), "unnamed until the pool was seen")
			_, _ = store.Stats(context.Background()) // no table: an error, after the check
			require.Equal(t, c.pooled, outbox.StatementsUnnamed(store))
		})
	}
}

// TestPoolerDetectedAfterAPublish: a Publish checks the dialect through its
// transaction, never the pool; the pool's first use still looks for a
// pooler, so a relay sharing the store with a publisher gets its named
// statements back on a direct connection.
func TestPoolerDetectedAfterAPublish(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	table := testenv.TableName(t)
	applyDDL(t, func(q string) error { _, err := db.Exec(q); return err }, outbox.PostgreSQL, table)
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: table}}, nil)
	require.NoError(t, err)
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	require.NoError(t, pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	require.True(t, outbox.StatementsUnnamed(store), "a Publish does not look at the pool")
	_, err = store.Stats(context.Background())
	require.NoError(t, err)
	require.False(t, outbox.StatementsUnnamed(store))
}
