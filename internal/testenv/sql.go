package testenv

import (
	"database/sql"
	"path/filepath"
	"testing"

	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "modernc.org/sqlite"             // driver "sqlite"
)

// MySQL opens the test MySQL/MariaDB database, closed when t ends.
func MySQL(t testing.TB) *sql.DB {
	t.Helper()
	return open(t, "mysql", MySQLDSN(), "MySQL/MariaDB", "mysql", "OUTBOX_TEST_MYSQL_DSN")
}

// SQLiteParams are the connection settings the outbox expects on SQLite: a
// busy timeout, so writers queue instead of failing with SQLITE_BUSY, and
// BEGIN IMMEDIATE, so a transaction that reads before it writes cannot
// deadlock on the lock upgrade.
const SQLiteParams = "_pragma=busy_timeout(10000)&_txlock=immediate"

// SQLite opens a new SQLite database file in t's temporary directory.
func SQLite(t testing.TB) *sql.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "outbox.db") + "?" + SQLiteParams
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatalf("open SQLite: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}
