package testenv

import (
	"context"
	"database/sql"
	"testing"
	"time"

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
	cfg, err := pgxpool.ParseConfig(PgBouncerDSN())
	if err != nil {
		t.Fatalf("OUTBOX_TEST_PGBOUNCER_DSN: %v", err)
	}
	cfg.MaxConns = 32
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		Unavailable(t, "PgBouncer", "pgbouncer", "OUTBOX_TEST_PGBOUNCER_DSN", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
