package inbox

import (
	"strings"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// sqlDialect is one database's inbox SQL, one type each
// (dialect_postgres.go, dialect_mysql.go, dialect_sqlite.go). The quoting,
// placeholder and time rules are the outbox table's.
type sqlDialect interface {
	// placeholder is the bind marker of the n-th (1-based) argument.
	placeholder(n int) string
	quoteIdent(name string) string
	// index names the purge index.
	index(t table) string
	// ddl creates the table: one row per (consumer, message) processed,
	// whose primary key is what makes a second delivery a duplicate, and
	// an index by age for Purge. No surrogate id: the key is the row.
	ddl(t table) []string
	// migrationLock is the statement that serialises concurrent
	// migrations inside their transaction; "" where the database does.
	migrationLock(t table) (string, []any)
	// insert records a delivery (see table.insertQuery).
	insert(t table) string
	// purge deletes at most limit of consumer's records older than
	// retentionMicros.
	purge(t table, consumer string, retentionMicros int64, limit int) (string, []any)
	// age is the age of a consumer's oldest record in microseconds, for
	// statsQuery.
	age() string
	// duplicate reports whether err is a duplicate-key error (where the
	// insert does not skip duplicates itself).
	duplicate(err error) bool
}

// dialectOf maps a validated Dialect to its SQL.
func dialectOf(d outbox.Dialect) sqlDialect {
	switch d {
	case outbox.PostgreSQL:
		return postgresDialect{}
	case outbox.MySQL:
		return mysqlDialect{}
	}
	return sqliteDialect{}
}

func quoteParts(name, q string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = q + p + q
	}
	return strings.Join(parts, ".")
}

// standardSQL is what PostgreSQL and SQLite share.
type standardSQL struct{}

func (standardSQL) quoteIdent(name string) string { return quoteParts(name, `"`) }

// insert: a duplicate waits for, then sees, a concurrent delivery's
// uncommitted row and inserts nothing.
func (standardSQL) insert(t table) string {
	return `INSERT INTO ` + t.quoted + ` (consumer, message_uuid) VALUES (` + t.p(1) + `, ` + t.p(2) + `) ON CONFLICT DO NOTHING`
}

// subselectPurge deletes through a subquery that picks the oldest batch;
// older is the condition "processed_at is older than the retention".
func (standardSQL) subselectPurge(t table, older string, limit string) string {
	return `DELETE FROM ` + t.quoted + ` WHERE consumer = ` + t.p(1) + ` AND message_uuid IN (SELECT message_uuid FROM ` + t.quoted +
		` WHERE consumer = ` + t.p(1) + ` AND ` + older + ` ORDER BY processed_at LIMIT ` + limit + `)`
}

func (standardSQL) duplicate(error) bool { return false }
