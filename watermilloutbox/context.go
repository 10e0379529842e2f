package watermilloutbox

import (
	"context"
	"database/sql"
)

type txContextKey struct{}

// ContextWithTx returns a context carrying tx. A Publisher finds the
// transaction of a message whose context (message.Message.SetContext) was
// derived from it, so code that only holds a message.Publisher — a
// cqrs.EventBus, for one — writes into the caller's transaction unchanged.
func ContextWithTx(ctx context.Context, tx *sql.Tx) context.Context {
	return context.WithValue(ctx, txContextKey{}, tx)
}

// TxFromContext returns the transaction stored by ContextWithTx, if any.
func TxFromContext(ctx context.Context) (*sql.Tx, bool) {
	if ctx == nil {
		return nil, false
	}
	tx, ok := ctx.Value(txContextKey{}).(*sql.Tx)
	return tx, ok && tx != nil
}
