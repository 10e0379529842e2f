package watermilloutbox

import (
	"fmt"
	"strconv"
	"strings"
)

// Dialect names the SQL database the outbox table lives in. It is always
// chosen explicitly: the driver behind a *sql.DB is never guessed.
type Dialect string

const (
	// PostgreSQL 12 or newer (driver github.com/jackc/pgx/v5/stdlib or any
	// database/sql PostgreSQL driver).
	PostgreSQL Dialect = "postgres"
	// MySQL 8 or MariaDB 10.6 or newer (driver github.com/go-sql-driver/mysql).
	MySQL Dialect = "mysql"
	// SQLite 3.35 or newer (driver modernc.org/sqlite).
	SQLite Dialect = "sqlite"
)

// SQLiteConnParams are the connection parameters (modernc.org/sqlite DSN
// syntax) the outbox expects on SQLite: a busy timeout of 10 s, so writers
// queue for the database's single write lock instead of failing with
// SQLITE_BUSY, and BEGIN IMMEDIATE, so a transaction that reads before it
// writes cannot fail on the lock upgrade. Append them to the file DSN:
// "file:/path/app.db?" + SQLiteConnParams. Migrate turns on WAL mode (a
// property of the file), so the relay's reads do not block writers.
const SQLiteConnParams = "_pragma=busy_timeout(10000)&_txlock=immediate"

// ParseDialect maps a name ("postgres", "postgresql", "pgx", "mysql",
// "mariadb", "sqlite", "sqlite3"; any case) to a Dialect.
func ParseDialect(name string) (Dialect, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "postgres", "postgresql", "pgx":
		return PostgreSQL, nil
	case "mysql", "mariadb":
		return MySQL, nil
	case "sqlite", "sqlite3":
		return SQLite, nil
	}
	return "", fmt.Errorf("%w: %q (want postgres, mysql or sqlite)", ErrUnknownDialect, name)
}

// Validate returns ErrUnknownDialect for anything but the constants above.
func (d Dialect) Validate() error {
	switch d {
	case PostgreSQL, MySQL, SQLite:
		return nil
	}
	return fmt.Errorf("%w: %q (want postgres, mysql or sqlite)", ErrUnknownDialect, string(d))
}

// placeholder returns the bind marker of the n-th (1-based) argument.
func (d Dialect) placeholder(n int) string {
	if d == PostgreSQL {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// quoteIdent quotes a validated, possibly schema-qualified name part by part,
// so reserved words such as "order" work as table names.
func (d Dialect) quoteIdent(name string) string {
	q := `"`
	if d == MySQL {
		q = "`"
	}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = q + p + q
	}
	return strings.Join(parts, ".")
}
