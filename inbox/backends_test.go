package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// backend is a consumer's database through one driver: the inbox tests run
// once for each, through one body.
type backend struct {
	name    string
	dialect outbox.Dialect
	open    func(t *testing.T) *env
}

// env is a test's connection to its backend.
type env struct {
	dialect outbox.Dialect
	sqlDB   *sql.DB       // nil over a pgx pool
	pool    *pgxpool.Pool // nil over a *sql.DB
}

var backends = []backend{
	{"postgres/database-sql", outbox.PostgreSQL, func(t *testing.T) *env {
		return &env{dialect: outbox.PostgreSQL, sqlDB: testenv.Postgres(t)}
	}},
	{"postgres/pgx", outbox.PostgreSQL, func(t *testing.T) *env {
		return &env{dialect: outbox.PostgreSQL, pool: testenv.PostgresPool(t)}
	}},
	{"mysql", outbox.MySQL, func(t *testing.T) *env {
		return &env{dialect: outbox.MySQL, sqlDB: testenv.MySQL(t)}
	}},
	{"sqlite", outbox.SQLite, func(t *testing.T) *env {
		return &env{dialect: outbox.SQLite, sqlDB: testenv.SQLite(t)}
	}},
}

func forEachBackend(t *testing.T, body func(t *testing.T, e *env)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { body(t, b.open(t)) })
	}
}

func (e *env) p(n int) string {
	if e.dialect == outbox.PostgreSQL {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// exec runs q outside any transaction.
func (e *env) exec(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	ctx := context.Background()
	if e.pool != nil {
		tag, err := e.pool.Exec(ctx, q, args...)
		require.NoError(t, err, q)
		return tag.RowsAffected()
	}
	res, err := e.sqlDB.ExecContext(ctx, q, args...)
	require.NoError(t, err, q)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	return n
}

// count runs q, which selects one integer.
func (e *env) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	var n int
	var err error
	if e.pool != nil {
		err = e.pool.QueryRow(ctx, q, args...).Scan(&n)
	} else {
		err = e.sqlDB.QueryRowContext(ctx, q, args...).Scan(&n)
	}
	require.NoError(t, err, q)
	return n
}

// dropLater drops table when t ends.
func (e *env) dropLater(t *testing.T, table string) {
	t.Cleanup(func() {
		q := `DROP TABLE IF EXISTS ` + table
		if e.pool != nil {
			_, _ = e.pool.Exec(context.Background(), q)
		} else {
			_, _ = e.sqlDB.ExecContext(context.Background(), q)
		}
	})
}

// inbox returns a migrated inbox on a fresh table.
func (e *env) inbox(t *testing.T, cfg inbox.Config) *inbox.Inbox {
	t.Helper()
	if cfg.Consumer == "" {
		cfg.Consumer = "billing"
	}
	if cfg.Table == "" {
		cfg.Table = testenv.TableName(t)
	}
	e.dropLater(t, cfg.Table)
	var in *inbox.Inbox
	var err error
	if e.pool != nil {
		in, err = inbox.NewPgx(e.pool, cfg, nil)
	} else {
		cfg.Dialect = e.dialect
		in, err = inbox.New(e.sqlDB, cfg, nil)
	}
	require.NoError(t, err)
	require.NoError(t, in.Migrate(context.Background()))
	return in
}

// store returns a migrated outbox store on a fresh table.
func (e *env) store(t *testing.T) *outbox.SQLStore {
	t.Helper()
	cfg := config.Config{Table: "o" + testenv.TableName(t)[1:]}
	e.dropLater(t, cfg.Table)
	var s *outbox.SQLStore
	var err error
	if e.pool != nil {
		s, err = outbox.NewPgxStore(e.pool, outbox.PgxStoreConfig{Outbox: cfg}, nil)
	} else {
		s, err = outbox.NewSQLStore(e.sqlDB, outbox.SQLStoreConfig{Dialect: e.dialect, Outbox: cfg}, nil)
	}
	require.NoError(t, err)
	require.NoError(t, s.Migrate(context.Background()))
	return s
}

// effects is a business table: a row per application of a message.
type effects struct {
	e     *env
	table string
}

func (e *env) effects(t *testing.T) effects {
	t.Helper()
	name := "e" + testenv.TableName(t)[1:]
	e.dropLater(t, name)
	e.exec(t, `CREATE TABLE `+name+` (message_uuid VARCHAR(64) NOT NULL)`)
	return effects{e, name}
}

// apply writes one effect of uuid under the transaction ctx carries, as a
// handler does.
func (f effects) apply(ctx context.Context, uuid string) error {
	q := `INSERT INTO ` + f.table + ` (message_uuid) VALUES (` + f.e.p(1) + `)`
	if tx, ok := outbox.TxFromContext(ctx); ok {
		_, err := tx.ExecContext(ctx, q, uuid)
		return err
	}
	if tx, ok := outbox.PgxTxFromContext(ctx); ok {
		_, err := tx.Exec(ctx, q, uuid)
		return err
	}
	return fmt.Errorf("no transaction in the context")
}

// of counts uuid's effects.
func (f effects) of(t *testing.T, uuid string) int {
	t.Helper()
	return f.e.count(t, `SELECT count(*) FROM `+f.table+` WHERE message_uuid = `+f.e.p(1), uuid)
}

// records counts the inbox rows of uuid.
func (e *env) records(t *testing.T, table, uuid string) int {
	t.Helper()
	return e.count(t, `SELECT count(*) FROM `+table+` WHERE message_uuid = `+e.p(1), uuid)
}

// backdate makes every record of table older by days.
func (e *env) backdate(t *testing.T, table string, days int) {
	t.Helper()
	var set string
	switch e.dialect {
	case outbox.PostgreSQL:
		set = fmt.Sprintf("processed_at - interval '%d days'", days)
	case outbox.MySQL:
		set = fmt.Sprintf("processed_at - INTERVAL %d DAY", days)
	default:
		set = fmt.Sprintf("processed_at - %d", int64(days)*86400*1000000)
	}
	e.exec(t, `UPDATE `+table+` SET processed_at = `+set)
}

// lockWaiters counts the sessions waiting for a lock on table: on SQLite
// (one connection), the callers waiting for the connection so far.
func (e *env) lockWaiters(t *testing.T, table string) int {
	t.Helper()
	switch e.dialect {
	case outbox.PostgreSQL:
		return e.count(t, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`, "%"+table+"%")
	case outbox.MySQL:
		// InnoDB refreshes this view only when it was not read for 100ms:
		// poll it less often.
		return e.count(t, `SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE ?`, "%"+table+"%")
	default:
		return int(e.sqlDB.Stats().WaitCount)
	}
}

// sqliteForConfig is a database for tests that never reach it.
func sqliteForConfig(t *testing.T) *sql.DB { return testenv.SQLite(t) }
