package watermilloutbox_test

import (
	"context"
	"database/sql"
	"testing"

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
