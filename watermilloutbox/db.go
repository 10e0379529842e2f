package watermilloutbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The store runs every statement through these small interfaces, so the
// same SQL serves a database/sql *sql.DB (any dialect) and a pgx pool
// (PostgreSQL): sqlDB and pgxDB below.

// queryer runs statements: a database handle or one of its transactions.
type queryer interface {
	exec(ctx context.Context, q string, args ...any) (int64, error)
	query(ctx context.Context, q string, args ...any) (rows, error)
	queryRow(ctx context.Context, q string, args ...any) row
}

// rows is a result set: *sql.Rows or pgx.Rows.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// row is a single-row result.
type row interface{ Scan(dest ...any) error }

// tx is a transaction.
type tx interface {
	queryer
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

// database is the store's handle.
type database interface {
	queryer
	// begin starts a transaction, at READ COMMITTED when readCommitted
	// (MySQL's claims), else at the database's default.
	begin(ctx context.Context, readCommitted bool) (tx, error)
	ping(ctx context.Context) error
	// withPgxConn runs fn on a connection of its own that is closed
	// afterwards, never returned to the pool (a LISTEN stays with it).
	withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error
	// maxConns is the pool's connection limit; 0 when unlimited.
	maxConns() int
	// driver names the driver, for errors.
	driver() string
}

// inTx runs fn in a transaction of db, committing when it returns nil.
func inTx(ctx context.Context, db database, fn func(tx tx) error) error {
	t, err := db.begin(ctx, false)
	if err != nil {
		return err
	}
	if err := fn(t); err != nil {
		return errors.Join(err, t.rollback(ctx))
	}
	return t.commit(ctx)
}

// sqlDB is a database/sql handle.
type sqlDB struct{ db *sql.DB }

// sqlExec is what *sql.DB, *sql.Tx and *sql.Conn share.
type sqlExec interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// sqlQueryer adapts a sqlExec to queryer.
type sqlQueryer struct{ e sqlExec }

func (q sqlQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	res, err := q.e.ExecContext(ctx, s, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q sqlQueryer) query(ctx context.Context, s string, args ...any) (rows, error) {
	rs, err := q.e.QueryContext(ctx, s, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rs}, nil
}

func (q sqlQueryer) queryRow(ctx context.Context, s string, args ...any) row {
	return q.e.QueryRowContext(ctx, s, args...)
}

// sqlRows drops *sql.Rows' Close error: Err reports what matters.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

func (d sqlDB) exec(ctx context.Context, q string, args ...any) (int64, error) {
	return sqlQueryer{d.db}.exec(ctx, q, args...)
}

func (d sqlDB) query(ctx context.Context, q string, args ...any) (rows, error) {
	return sqlQueryer{d.db}.query(ctx, q, args...)
}

func (d sqlDB) queryRow(ctx context.Context, q string, args ...any) row {
	return d.db.QueryRowContext(ctx, q, args...)
}

func (d sqlDB) begin(ctx context.Context, readCommitted bool) (tx, error) {
	var opts *sql.TxOptions
	if readCommitted {
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	t, err := d.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return sqlTx{sqlQueryer{t}, t}, nil
}

func (d sqlDB) ping(ctx context.Context) error { return d.db.PingContext(ctx) }

func (d sqlDB) withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		pc, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok {
			return errNotPgx
		}
		// driver.ErrBadConn: database/sql discards the connection.
		return errors.Join(fn(pc.Conn()), driver.ErrBadConn)
	})
}

func (d sqlDB) maxConns() int { return d.db.Stats().MaxOpenConnections }

func (d sqlDB) driver() string { return fmt.Sprintf("%T", d.db.Driver()) }

// sqlTx is a database/sql transaction.
type sqlTx struct {
	sqlQueryer
	t *sql.Tx
}

func (t sqlTx) commit(context.Context) error   { return t.t.Commit() }
func (t sqlTx) rollback(context.Context) error { return t.t.Rollback() }

// pgxDB is a pgx pool (PostgreSQL only).
type pgxDB struct{ pool *pgxpool.Pool }

// pgxExec is what *pgxpool.Pool, pgx.Tx and *pgx.Conn share.
type pgxExec interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgxQueryer adapts a pgxExec to queryer.
type pgxQueryer struct{ e pgxExec }

func (q pgxQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	tag, err := q.e.Exec(ctx, s, args...)
	return tag.RowsAffected(), err
}

func (q pgxQueryer) query(ctx context.Context, s string, args ...any) (rows, error) {
	return q.e.Query(ctx, s, args...)
}

func (q pgxQueryer) queryRow(ctx context.Context, s string, args ...any) row {
	return q.e.QueryRow(ctx, s, args...)
}

func (d pgxDB) exec(ctx context.Context, q string, args ...any) (int64, error) {
	return pgxQueryer{d.pool}.exec(ctx, q, args...)
}

func (d pgxDB) query(ctx context.Context, q string, args ...any) (rows, error) {
	return d.pool.Query(ctx, q, args...)
}

func (d pgxDB) queryRow(ctx context.Context, q string, args ...any) row {
	return d.pool.QueryRow(ctx, q, args...)
}

func (d pgxDB) begin(ctx context.Context, readCommitted bool) (tx, error) {
	var opts pgx.TxOptions
	if readCommitted {
		opts.IsoLevel = pgx.ReadCommitted
	}
	t, err := d.pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return pgxTx{pgxQueryer{t}, t}, nil
}

func (d pgxDB) ping(ctx context.Context) error { return d.pool.Ping(ctx) }

func (d pgxDB) withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := c.Hijack() // the pool forgets it: it is closed here
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

func (d pgxDB) maxConns() int { return int(d.pool.Config().MaxConns) }

func (d pgxDB) driver() string { return "pgx pool" }

// pgxTx is a pgx transaction.
type pgxTx struct {
	pgxQueryer
	t pgx.Tx
}

func (t pgxTx) commit(ctx context.Context) error   { return t.t.Commit(ctx) }
func (t pgxTx) rollback(ctx context.Context) error { return t.t.Rollback(ctx) }

// pgxTxQueryer is a caller's pgx transaction: a closed one answers with an
// error wrapping sql.ErrTxDone as well as pgx.ErrTxClosed, as a finished
// *sql.Tx answers with sql.ErrTxDone.
type pgxTxQueryer struct{ pgxQueryer }

func (q pgxTxQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	n, err := q.pgxQueryer.exec(ctx, s, args...)
	if errors.Is(err, pgx.ErrTxClosed) {
		err = fmt.Errorf("%w: %w", sql.ErrTxDone, err)
	}
	return n, err
}
