package watermilloutbox

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"
)

type txContextKey struct{}

// ContextWithTx returns a context carrying tx. A Publisher finds the
// transaction of a message whose context (message.Message.SetContext) was
// derived from it, so code that only holds a message.Publisher — a
// cqrs.EventBus, for one — writes into the caller's transaction unchanged.
// A context carries one transaction: the last ContextWithTx or
// ContextWithPgxTx wins.
func ContextWithTx(ctx context.Context, tx *sql.Tx) context.Context {
	return context.WithValue(ctx, txContextKey{}, tx)
}

// ContextWithPgxTx is ContextWithTx for a pgx transaction.
func ContextWithPgxTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txContextKey{}, tx)
}

// TxFromContext returns the *sql.Tx stored by ContextWithTx, if any.
func TxFromContext(ctx context.Context) (*sql.Tx, bool) {
	if ctx == nil {
		return nil, false
	}
	tx, ok := ctx.Value(txContextKey{}).(*sql.Tx)
	return tx, ok && tx != nil
}

// PgxTxFromContext returns the pgx.Tx stored by ContextWithPgxTx, if any.
func PgxTxFromContext(ctx context.Context) (pgx.Tx, bool) {
	if ctx == nil {
		return nil, false
	}
	tx, ok := ctx.Value(txContextKey{}).(pgx.Tx)
	return tx, ok && tx != nil
}

// callerTx is the caller's transaction a Publish writes under, of either
// kind; its zero value is none.
type callerTx struct {
	q  queryer
	id any // the *sql.Tx or pgx.Tx itself, to compare
}

func sqlCallerTx(tx *sql.Tx) callerTx {
	if tx == nil {
		return callerTx{}
	}
	return callerTx{q: sqlQueryer{e: tx}, id: tx}
}

func pgxCallerTx(tx pgx.Tx) callerTx {
	if tx == nil {
		return callerTx{}
	}
	return callerTx{q: pgxTxQueryer{pgxQueryer{e: tx}}, id: tx}
}

// txFromContext returns the transaction ctx carries, of either kind.
func txFromContext(ctx context.Context) callerTx {
	if ctx == nil {
		return callerTx{}
	}
	switch tx := ctx.Value(txContextKey{}).(type) {
	case *sql.Tx:
		return sqlCallerTx(tx)
	case pgx.Tx:
		return pgxCallerTx(tx)
	}
	return callerTx{}
}
