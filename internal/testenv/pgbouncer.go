package testenv

import (
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultPgBouncerDSN is PgBouncer of scripts/services (pool_mode =
// transaction, in front of the test PostgreSQL), as a user would write it.
const DefaultPgBouncerDSN = "postgres://postgres@127.0.0.1:6432/test?sslmode=disable"

// PgBouncerDSN returns OUTBOX_TEST_PGBOUNCER_DSN or the default.
func PgBouncerDSN() string { return Env("OUTBOX_TEST_PGBOUNCER_DSN", DefaultPgBouncerDSN) }

// PgBouncer opens the test database through PgBouncer in transaction
// pooling mode with pgx's database/sql driver, closed when t ends.
func PgBouncer(t testing.TB) *sql.DB {
	t.Helper()
	return open(t, "pgx", PgBouncerDSN(), "PgBouncer", "pgbouncer", "OUTBOX_TEST_PGBOUNCER_DSN")
}

// PgBouncerPool opens a pgx pool on the test database through PgBouncer,
// closed when t ends.
func PgBouncerPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return openPool(t, PgBouncerDSN(), "PgBouncer", "pgbouncer", "OUTBOX_TEST_PGBOUNCER_DSN")
}
