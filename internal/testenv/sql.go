package testenv

import (
	"database/sql"
	"path/filepath"
	"testing"

	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "modernc.org/sqlite"             // driver "sqlite"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// MySQL opens the test MySQL/MariaDB database, closed when t ends.
func MySQL(t testing.TB) *sql.DB {
	t.Helper()
	return open(t, "mysql", MySQLDSN(), "MySQL/MariaDB", "mysql", "OUTBOX_TEST_MYSQL_DSN")
}

// SQLite opens a new SQLite database file in t's temporary directory.
func SQLite(t testing.TB) *sql.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "outbox.db") + "?" + watermilloutbox.SQLiteConnParams
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatalf("open SQLite: %v", err)
	}
	// One connection: SQLite has one writer at a time anyway, and queueing
	// in the pool is far cheaper than SQLite's sleeping busy handler.
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}
