package inbox

import (
	"context"
	"database/sql"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// The inbox runs on a *sql.DB (any dialect) or a pgx pool (PostgreSQL).
// Unlike the outbox store's statements, its transaction is the caller's
// too: the handler finds it in the message's context as the *sql.Tx or
// pgx.Tx the outbox's ContextWithTx and ContextWithPgxTx carry, so the
// adapters below hand out the real thing.

// database is the inbox's handle.
type database interface {
	begin(ctx context.Context) (txn, error)
	// beginWith begins a transaction and runs q in it, and returns the
	// rows q affected. tx is nil if the transaction did not begin (err is
	// then the begin's); otherwise the caller ends it, also when q failed.
	beginWith(ctx context.Context, q string, args ...any) (tx txn, n int64, err error)
	exec(ctx context.Context, q string, args ...any) (int64, error)
	// each runs q and hands fn each row's Scan.
	each(ctx context.Context, q string, args []any, fn func(scan func(dest ...any) error) error) error
}

// txn is a delivery's transaction.
type txn interface {
	exec(ctx context.Context, q string, args ...any) (int64, error)
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
	// bind returns ctx carrying the transaction, as the outbox's
	// publisher and the handler's own code look for it.
	bind(ctx context.Context) context.Context
	// publisher binds p to the transaction.
	publisher(p *outbox.Publisher) message.Publisher
}

type sqlDB struct{ db *sql.DB }

func (d sqlDB) begin(ctx context.Context) (txn, error) {
	t, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return sqlTx{t}, nil
}

// beginWith spends a round trip on the BEGIN: database/sql sends it on
// its own.
func (d sqlDB) beginWith(ctx context.Context, q string, args ...any) (txn, int64, error) {
	tx, err := d.begin(ctx)
	if err != nil {
		return nil, 0, err
	}
	n, err := tx.exec(ctx, q, args...)
	return tx, n, err
}

func (d sqlDB) exec(ctx context.Context, q string, args ...any) (int64, error) {
	return sqlExec(d.db.ExecContext(ctx, q, args...))
}

func (d sqlDB) each(ctx context.Context, q string, args []any, fn func(scan func(dest ...any) error) error) error {
	rs, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		if err := fn(rs.Scan); err != nil {
			return err
		}
	}
	return rs.Err()
}

func sqlExec(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

type sqlTx struct{ t *sql.Tx }

func (t sqlTx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	return sqlExec(t.t.ExecContext(ctx, q, args...))
}
func (t sqlTx) commit(context.Context) error   { return t.t.Commit() }
func (t sqlTx) rollback(context.Context) error { return t.t.Rollback() }
func (t sqlTx) bind(ctx context.Context) context.Context {
	return outbox.ContextWithTx(ctx, t.t)
}
func (t sqlTx) publisher(p *outbox.Publisher) message.Publisher { return p.WithTx(t.t) }

type pgxDB struct{ pool *pgxpool.Pool }

func (d pgxDB) begin(ctx context.Context) (txn, error) {
	t, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return pgxTx{t}, nil
}

// beginWith sends the BEGIN and q in one batch: one round trip where
// pool.Begin and an Exec take two, a quarter of a one-statement handler's
// delivery.
func (d pgxDB) beginWith(ctx context.Context, q string, args ...any) (txn, int64, error) {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(q, args...)
	br := d.pool.SendBatch(ctx, b)
	tx := br.Tx() // owns the pool's connection until Commit or Rollback
	_, err := br.Exec()
	if err != nil {
		_ = br.Close()
		_ = tx.Rollback(context.WithoutCancel(ctx)) // releases the connection
		return nil, 0, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return pgxTx{tx}, tag.RowsAffected(), err
}

func (d pgxDB) exec(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := d.pool.Exec(ctx, q, args...)
	return tag.RowsAffected(), err
}

func (d pgxDB) each(ctx context.Context, q string, args []any, fn func(scan func(dest ...any) error) error) error {
	rs, err := d.pool.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		if err := fn(rs.Scan); err != nil {
			return err
		}
	}
	return rs.Err()
}

type pgxTx struct{ t pgx.Tx }

func (t pgxTx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := t.t.Exec(ctx, q, args...)
	return tag.RowsAffected(), err
}
func (t pgxTx) commit(ctx context.Context) error   { return t.t.Commit(ctx) }
func (t pgxTx) rollback(ctx context.Context) error { return t.t.Rollback(ctx) }
func (t pgxTx) bind(ctx context.Context) context.Context {
	return outbox.ContextWithPgxTx(ctx, t.t)
}
func (t pgxTx) publisher(p *outbox.Publisher) message.Publisher { return p.WithPgxTx(t.t) }
