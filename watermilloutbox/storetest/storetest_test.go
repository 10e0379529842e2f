package storetest_test

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/storetest"
)

// sqlHarness runs the kit on SQLStore over db, a table per test.
func sqlHarness(dialect outbox.Dialect, open func(t testing.TB) *sql.DB) storetest.Harness {
	return storetest.Harness{
		New: func(t *testing.T) (relaystore.Store, storetest.Insert) {
			store := newSQLStore(t, dialect, open(t))
			return store, inserter(store)
		},
		ListDead: func(ctx context.Context, s relaystore.Store) ([]outbox.DeadRow, error) {
			return sqlStoreOf(s).ListDead(ctx, outbox.DeadQuery{})
		},
		Requeue: func(ctx context.Context, s relaystore.Store, ids ...int64) (int, error) {
			return sqlStoreOf(s).Requeue(ctx, ids...)
		},
		Stats: func(ctx context.Context, s relaystore.Store) (outbox.Stats, error) {
			return sqlStoreOf(s).Stats(ctx)
		},
		BlockedKeys: func(ctx context.Context, s relaystore.Store, q outbox.BlockedQuery) ([]outbox.BlockedKey, error) {
			return sqlStoreOf(s).BlockedKeys(ctx, q)
		},
		RequeueKey: func(ctx context.Context, s relaystore.Store, topic, key string) (outbox.KeyAction, error) {
			return sqlStoreOf(s).RequeueKey(ctx, topic, key)
		},
		SkipKey: func(ctx context.Context, s relaystore.Store, topic, key string) (outbox.KeyAction, error) {
			return sqlStoreOf(s).SkipKey(ctx, topic, key)
		},
		NewStrict: func(t *testing.T) (relaystore.Store, storetest.Insert) {
			store := newSQLStoreWith(t, dialect, open(t), config.Config{StrictOrder: true})
			return store, inserter(store)
		},
	}
}

func newSQLStore(t *testing.T, dialect outbox.Dialect, db *sql.DB) *outbox.SQLStore {
	t.Helper()
	return newSQLStoreWith(t, dialect, db, config.Config{})
}

func newSQLStoreWith(t *testing.T, dialect outbox.Dialect, db *sql.DB, cfg config.Config) *outbox.SQLStore {
	t.Helper()
	table := testenv.TableName(t)
	cfg.Table = table
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: dialect, Outbox: cfg}, nil)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table + `_relays`) })
	return store
}

func inserter(store *outbox.SQLStore) storetest.Insert {
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	if err != nil {
		panic(err)
	}
	return func(t *testing.T, topic string, msgs ...*message.Message) {
		t.Helper()
		require.NoError(t, pub.Publish(topic, msgs...))
	}
}

// sqlStoreOf unwraps the kit's stores (and the decorator's).
func sqlStoreOf(s relaystore.Store) *outbox.SQLStore {
	if c, ok := s.(*counting); ok {
		return c.Store.(*outbox.SQLStore)
	}
	return s.(*outbox.SQLStore)
}

func TestSQLStorePostgreSQL(t *testing.T) {
	t.Parallel()
	storetest.Run(t, sqlHarness(outbox.PostgreSQL, testenv.Postgres))
}

func TestSQLStoreMySQL(t *testing.T) {
	t.Parallel()
	storetest.Run(t, sqlHarness(outbox.MySQL, testenv.MySQL))
}

// TestPgxStore: the store over a pgx pool passes the same kit.
func TestPgxStore(t *testing.T) {
	t.Parallel()
	h := sqlHarness(outbox.PostgreSQL, testenv.Postgres)
	newPgx := func(t *testing.T, cfg config.Config) (relaystore.Store, storetest.Insert) {
		pool := testenv.PostgresPool(t)
		cfg.Table = testenv.TableName(t)
		store, err := outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: cfg}, nil)
		require.NoError(t, err)
		require.NoError(t, store.Migrate(context.Background()))
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+cfg.Table) })
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+cfg.Table+`_relays`) })
		return store, inserter(store)
	}
	h.New = func(t *testing.T) (relaystore.Store, storetest.Insert) { return newPgx(t, config.Config{}) }
	h.NewStrict = func(t *testing.T) (relaystore.Store, storetest.Insert) {
		return newPgx(t, config.Config{StrictOrder: true})
	}
	storetest.Run(t, h)
}

func TestSQLStoreSQLite(t *testing.T) {
	t.Parallel()
	storetest.Run(t, sqlHarness(outbox.SQLite, testenv.SQLite))
}

// counting is a custom Store: a decorator that counts the claims and the
// rows they took, as a metrics wrapper would. Embedding the Store passes
// every other method on, Listen (the wake-ups) included.
type counting struct {
	relaystore.Store
	claims, rows atomic.Int64
}

func (c *counting) Claim(ctx context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	claimed, err := c.Store.Claim(ctx, req)
	if err == nil {
		c.claims.Add(1)
		c.rows.Add(int64(len(claimed.Rows)))
	}
	return claimed, err
}

// TestDecoratedStorePassesTheKit: a custom Store (the decorator above, on
// PostgreSQL) passes the same kit, and saw the claims it was asked.
func TestDecoratedStorePassesTheKit(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var decorators []*counting
	h := sqlHarness(outbox.PostgreSQL, testenv.Postgres)
	h.New = func(t *testing.T) (relaystore.Store, storetest.Insert) {
		store := newSQLStore(t, outbox.PostgreSQL, testenv.Postgres(t))
		c := &counting{Store: store}
		mu.Lock()
		decorators = append(decorators, c)
		mu.Unlock()
		return c, inserter(store)
	}
	t.Run("kit", func(t *testing.T) { storetest.Run(t, h) })
	var claims int64
	for _, c := range decorators {
		claims += c.claims.Load()
	}
	require.Positive(t, claims)
}

// TestSQLStoreThroughPgBouncer: the store over database/sql, opened with
// the plain URL of PgBouncer in transaction pooling mode, passes the kit:
// none of its statements leaves a named prepared statement on a server
// connection another client then gets.
func TestSQLStoreThroughPgBouncer(t *testing.T) {
	t.Parallel()
	storetest.Run(t, sqlHarness(outbox.PostgreSQL, testenv.PgBouncer))
}

// TestPgxStoreThroughPgBouncer: the same over a pgx pool.
func TestPgxStoreThroughPgBouncer(t *testing.T) {
	t.Parallel()
	h := sqlHarness(outbox.PostgreSQL, testenv.PgBouncer)
	h.New = func(t *testing.T) (relaystore.Store, storetest.Insert) {
		pool := testenv.PgBouncerPool(t)
		table := testenv.TableName(t)
		store, err := outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: config.Config{Table: table}}, nil)
		require.NoError(t, err)
		require.NoError(t, store.Migrate(context.Background()))
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) })
		return store, inserter(store)
	}
	storetest.Run(t, h)
}
