package inbox

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// table holds the validated names the inbox's SQL is built from. The
// quoting and placeholder rules are the outbox table's.
type table struct {
	dialect outbox.Dialect
	name    string // as given, validated
	quoted  string // quoted, possibly schema-qualified
	base    string // unqualified part, for the index name
	schema  string // schema part or ""
}

func newTable(d outbox.Dialect, name string) table {
	t := table{dialect: d, name: name, quoted: quoteIdent(d, name), base: name}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		t.schema, t.base = name[:i], name[i+1:]
	}
	return t
}

func quoteIdent(d outbox.Dialect, name string) string {
	q := `"`
	if d == outbox.MySQL {
		q = "`"
	}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = q + p + q
	}
	return strings.Join(parts, ".")
}

// p is the bind marker of the n-th (1-based) argument.
func (t table) p(n int) string {
	if t.dialect == outbox.PostgreSQL {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// index names the purge index; PostgreSQL puts it in the table's schema,
// SQLite wants the schema on its name.
func (t table) index() string {
	name := t.base + "_processed_idx"
	if t.dialect == outbox.SQLite && t.schema != "" {
		name = t.schema + "." + name
	}
	return quoteIdent(t.dialect, name)
}

// ddl creates the table: one row per (consumer, message) processed, whose
// primary key is what makes a second delivery a duplicate, and an index by
// age for Purge. No surrogate id: the key is the row.
func (t table) ddl() []string {
	switch t.dialect {
	case outbox.PostgreSQL:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    consumer     TEXT        NOT NULL,
    message_uuid TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_uuid)
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.index() + ` ON ` + t.quoted + ` (consumer, processed_at)`,
		}
	case outbox.MySQL:
		// Times in UTC, as the outbox's; the binary collation keeps UUIDs
		// and names byte-exact (no case-insensitive duplicates).
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    consumer     VARCHAR(255) NOT NULL,
    message_uuid VARCHAR(255) NOT NULL,
    processed_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer, message_uuid),
    KEY ` + t.index() + ` (consumer, processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
		}
	default:
		// Times are integer microseconds since the Unix epoch, as the
		// outbox's.
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    consumer     TEXT    NOT NULL,
    message_uuid TEXT    NOT NULL,
    processed_at INTEGER NOT NULL DEFAULT ` + sqliteNow + `,
    PRIMARY KEY (consumer, message_uuid)
) WITHOUT ROWID`,
			`CREATE INDEX IF NOT EXISTS ` + t.index() + ` ON ` + t.base + ` (consumer, processed_at)`,
		}
	}
}

const sqliteNow = `(CAST(unixepoch('subsec') * 1000000 AS INTEGER))`

// DDL returns the statements that create the inbox table, separated by
// ";\n", for a migration tool; Inbox.Migrate runs the same statements. They
// are idempotent (IF NOT EXISTS). An invalid dialect or table name is an
// error (outbox.ErrUnknownDialect, outbox.ErrInvalidTableName).
func DDL(d outbox.Dialect, tableName string) (string, error) {
	c := Config{Consumer: "ddl", Table: tableName, Dialect: d}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return "", err
	}
	return strings.Join(newTable(d, c.Table).ddl(), ";\n") + ";\n", nil
}

// migrate runs the DDL in one transaction. On PostgreSQL, concurrent
// CREATE TABLE IF NOT EXISTS can still fail (a unique violation in
// pg_type), hence the advisory lock; MySQL takes a metadata lock of its own
// (and commits DDL implicitly), SQLite has one writer.
func (t table) migrate(ctx context.Context, db database) error {
	tx, err := db.begin(ctx)
	if err != nil {
		return err
	}
	if t.dialect == outbox.PostgreSQL {
		if _, err := tx.exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("migrate inbox "+t.name)); err != nil {
			return rollback(ctx, tx, err)
		}
	}
	for _, q := range t.ddl() {
		if _, err := tx.exec(ctx, q); err != nil {
			return rollback(ctx, tx, err)
		}
	}
	return tx.commit(ctx)
}

func lockKey(s string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("watermill-outbox " + s))
	return int64(h.Sum64() >> 1)
}

// insertQuery records a delivery. It returns one affected row for a new
// message and none for a duplicate, which waits for, then sees, a
// concurrent delivery's uncommitted row (see the package comment). MySQL
// has a plain INSERT: its duplicate-key error leaves the transaction
// usable, where INSERT IGNORE would also silence other errors.
func (t table) insertQuery() string {
	q := `INSERT INTO ` + t.quoted + ` (consumer, message_uuid) VALUES (` + t.p(1) + `, ` + t.p(2) + `)`
	if t.dialect == outbox.MySQL {
		return q
	}
	return q + ` ON CONFLICT DO NOTHING`
}

// olderThan is the condition "processed_at is older than the duration, in
// microseconds, bound at n", on the database clock.
func (t table) olderThan(n int) string {
	switch t.dialect {
	case outbox.PostgreSQL:
		return `processed_at < now() - (` + t.p(n) + `::bigint * interval '1 microsecond')`
	case outbox.MySQL:
		return `processed_at < UTC_TIMESTAMP(6) - INTERVAL ` + t.p(n) + ` MICROSECOND`
	default:
		return `processed_at < ` + sqliteNow + ` - ` + t.p(n)
	}
}

// purgeQuery deletes at most a batch of one consumer's records older than
// the retention; its arguments are purgeArgs'.
func (t table) purgeQuery() string {
	if t.dialect == outbox.MySQL {
		// MySQL cannot DELETE from a table it selects from in a
		// subquery, but takes ORDER BY and LIMIT on DELETE itself.
		return `DELETE FROM ` + t.quoted + ` WHERE consumer = ? AND ` + t.olderThan(0) + ` ORDER BY processed_at LIMIT ?`
	}
	return `DELETE FROM ` + t.quoted + ` WHERE consumer = ` + t.p(1) + ` AND message_uuid IN (SELECT message_uuid FROM ` + t.quoted +
		` WHERE consumer = ` + t.p(1) + ` AND ` + t.olderThan(2) + ` ORDER BY processed_at LIMIT ` + t.p(3) + `)`
}

func (t table) purgeArgs(consumer string, retentionMicros int64, limit int) []any {
	if t.dialect == outbox.SQLite { // "?" binds in order: the consumer twice
		return []any{consumer, consumer, retentionMicros, limit}
	}
	return []any{consumer, retentionMicros, limit}
}

// statsQuery lists the consumers with their record counts and the age of
// their oldest record in microseconds.
func (t table) statsQuery() string {
	var age string
	switch t.dialect {
	case outbox.PostgreSQL:
		age = `(extract(epoch FROM now() - min(processed_at)) * 1000000)::bigint`
	case outbox.MySQL:
		age = `TIMESTAMPDIFF(MICROSECOND, min(processed_at), UTC_TIMESTAMP(6))`
	default:
		age = sqliteNow + ` - min(processed_at)`
	}
	return `SELECT consumer, count(*), ` + age + ` FROM ` + t.quoted + ` GROUP BY consumer ORDER BY consumer`
}

// rollback rolls tx back after err, returning both.
func rollback(ctx context.Context, tx txn, err error) error {
	return errors.Join(err, tx.rollback(context.WithoutCancel(ctx)))
}
