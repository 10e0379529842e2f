package watermilloutbox

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// failingDB answers every query with err.
type failingDB struct{ err error }

func (f failingDB) exec(context.Context, string, ...any) (int64, error) { return 0, f.err }
func (f failingDB) query(context.Context, string, ...any) (rows, error) { return nil, f.err }
func (f failingDB) queryRow(context.Context, string, ...any) row        { return errRow{f.err} }

// TestProbeNamesTheRealError: only a missing version function (what one
// dialect's probe gets from another's database) is ErrDialectMismatch; any
// other failure (a pooler's prepared-statement clash, a lost connection) is
// returned as itself, not misnamed a mismatch.
func TestProbeNamesTheRealError(t *testing.T) {
	t.Parallel()
	pooler := &pgconn.PgError{Code: "42P05", Message: `prepared statement "stmtcache_1" already exists`}
	for _, c := range []struct {
		name     string
		dialect  Dialect
		err      error
		mismatch bool
	}{
		{"sqlite's probe on PostgreSQL", SQLite, &pgconn.PgError{Code: "42883", Message: "function sqlite_version() does not exist"}, true},
		{"sqlite's probe on MySQL", SQLite, &mysql.MySQLError{Number: 1305, Message: "FUNCTION test.sqlite_version does not exist"}, true},
		{"postgres' probe on SQLite", PostgreSQL, errors.New("SQL logic error: no such function: version (1)"), true},
		{"a transaction pooler", PostgreSQL, pooler, false},
		{"a lost connection", MySQL, &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, false},
		{"an aborted transaction", PostgreSQL, &pgconn.PgError{Code: "25P02", Message: "current transaction is aborted"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			err := probeDialect(context.Background(), failingDB{c.err}, c.dialect.sql(), "test driver")
			require.ErrorIs(t, err, c.err)
			if c.mismatch {
				require.ErrorIs(t, err, ErrDialectMismatch)
				return
			}
			require.NotErrorIs(t, err, ErrDialectMismatch)
			require.ErrorContains(t, err, "outbox: check that the database is "+string(c.dialect)+" (driver test driver): ")
		})
	}
	require.True(t, errors.As(probeDialect(context.Background(), failingDB{pooler}, PostgreSQL.sql(), "pgx pool"), new(*pgconn.PgError)))
}
