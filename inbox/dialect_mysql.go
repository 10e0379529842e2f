package inbox

import "github.com/e0a82c8c/watermill-outbox/internal/sqlerr"

type mysqlDialect struct{}

func (mysqlDialect) placeholder(int) string { return "?" }

func (mysqlDialect) quoteIdent(name string) string { return quoteParts(name, "`") }

func (d mysqlDialect) index(t table) string { return d.quoteIdent(t.base + "_processed_idx") }

// ddl: times in UTC, as the outbox's; the binary collation keeps UUIDs and
// names byte-exact (no case-insensitive duplicates).
func (mysqlDialect) ddl(t table) []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    consumer     VARCHAR(255) NOT NULL,
    message_uuid VARCHAR(255) NOT NULL,
    processed_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer, message_uuid),
    KEY ` + t.index() + ` (consumer, processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
	}
}

// migrationLock: MySQL takes a metadata lock of its own (and commits DDL
// implicitly).
func (mysqlDialect) migrationLock(table) (string, []any) { return "", nil }

// insert: a plain INSERT: its duplicate-key error leaves the transaction
// usable, where INSERT IGNORE would also silence other errors.
func (mysqlDialect) insert(t table) string {
	return `INSERT INTO ` + t.quoted + ` (consumer, message_uuid) VALUES (?, ?)`
}

// purge: MySQL cannot DELETE from a table it selects from in a subquery,
// but takes ORDER BY and LIMIT on DELETE itself.
func (mysqlDialect) purge(t table, consumer string, retentionMicros int64, limit int) (string, []any) {
	return `DELETE FROM ` + t.quoted + ` WHERE consumer = ? AND processed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY processed_at LIMIT ?`,
		[]any{consumer, retentionMicros, limit}
}

func (mysqlDialect) age() string {
	return `TIMESTAMPDIFF(MICROSECOND, min(processed_at), UTC_TIMESTAMP(6))`
}

func (mysqlDialect) duplicate(err error) bool { return sqlerr.MySQLNumber(err) == 1062 } // ER_DUP_ENTRY
