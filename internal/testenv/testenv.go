// Package testenv connects tests to the services they need. Targets come from
// environment variables with the defaults of docker-compose.yml. A test whose
// service is unreachable is skipped with a message naming the service and
// how to start it, unless OUTBOX_REQUIRE_SERVICES=1 (CI), where it fails.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// Defaults match docker-compose.yml and the CI machine.
const (
	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultMySQLDSN    = "root@tcp(127.0.0.1:3306)/test"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
	// DefaultKafkaBrokers is the one-node broker of scripts/services.
	DefaultKafkaBrokers = "127.0.0.1:9092"
	// DefaultKafkaClusterBrokers is the three-node cluster of
	// `scripts/services up kafka-cluster` (replication factor 3,
	// min.insync.replicas 2).
	DefaultKafkaClusterBrokers = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
)

// Env returns the variable's value or def.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// RequireServices reports whether OUTBOX_REQUIRE_SERVICES=1.
func RequireServices() bool { return os.Getenv("OUTBOX_REQUIRE_SERVICES") == "1" }

// Unavailable skips t, or fails it when services are required.
// composeService is the service's name in docker-compose.yml.
func Unavailable(t testing.TB, service, composeService, variable string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s unreachable (%v): start it with `scripts/services up %s` (or `docker compose up -d %s`) or point %s at one",
		service, err, composeService, composeService, variable)
	if RequireServices() {
		t.Fatal(msg + " (OUTBOX_REQUIRE_SERVICES=1)")
	}
	t.Skip(msg)
}

// PostgresDSN returns OUTBOX_TEST_POSTGRES_DSN or the default.
func PostgresDSN() string { return Env("OUTBOX_TEST_POSTGRES_DSN", DefaultPostgresDSN) }

// Postgres opens the test PostgreSQL database, closed when t ends.
func Postgres(t testing.TB) *sql.DB {
	t.Helper()
	return open(t, "pgx", PostgresDSN(), "PostgreSQL", "postgres", "OUTBOX_TEST_POSTGRES_DSN")
}

func open(t testing.TB, driver, dsn, service, composeService, variable string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", service, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		Unavailable(t, service, composeService, variable, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// Open opens a database for a driver registered by the caller (MySQL, SQLite).
func Open(t testing.TB, driver, dsn, service, composeService, variable string) *sql.DB {
	t.Helper()
	return open(t, driver, dsn, service, composeService, variable)
}

// AMQPURL returns OUTBOX_TEST_AMQP_URL or the default after checking that
// something listens there.
func AMQPURL(t testing.TB) string {
	t.Helper()
	u := Env("OUTBOX_TEST_AMQP_URL", DefaultAMQPURL)
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatalf("OUTBOX_TEST_AMQP_URL: %v", err)
	}
	conn, err := net.DialTimeout("tcp", parsed.Host, 3*time.Second)
	if err != nil {
		Unavailable(t, "RabbitMQ", "rabbitmq", "OUTBOX_TEST_AMQP_URL", err)
	}
	_ = conn.Close()
	return u
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// TableName returns a table name unique to this test run, so parallel tests
// never share a table: "t_<test name>_<random>", at most 48 characters.
func TableName(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 36 {
		name = name[len(name)-36:]
	}
	return "t_" + strings.Trim(name, "_") + "_" + hex.EncodeToString(b[:])
}

// MySQLDSN returns OUTBOX_TEST_MYSQL_DSN or the default.
func MySQLDSN() string { return Env("OUTBOX_TEST_MYSQL_DSN", DefaultMySQLDSN) }
