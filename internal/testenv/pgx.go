package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresPool opens a pgx pool on the test PostgreSQL database, closed when
// t ends: for the tests of services that use pgx and no database/sql.
func PostgresPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return openPool(t, PostgresDSN(), "PostgreSQL", "postgres", "OUTBOX_TEST_POSTGRES_DSN")
}

// openPool opens a pgx pool on dsn and pings it; an unreachable server
// skips or fails t like any missing service. Closed when t ends.
func openPool(t testing.TB, dsn, service, composeService, variable string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%s: %v", variable, err)
	}
	// As many connections as the relay tests take from a *sql.DB.
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
		Unavailable(t, service, composeService, variable, err)
	}
	t.Cleanup(pool.Close)
	return pool
}
