package inbox

// sqliteDialect: times are integer microseconds since the Unix epoch, as
// the outbox's.
type sqliteDialect struct{ standardSQL }

const sqliteNow = `(CAST(unixepoch('subsec') * 1000000 AS INTEGER))`

func (sqliteDialect) placeholder(int) string { return "?" }

// index: SQLite wants the schema on the index's name.
func (d sqliteDialect) index(t table) string {
	name := t.base + "_processed_idx"
	if t.schema != "" {
		name = t.schema + "." + name
	}
	return d.quoteIdent(name)
}

func (sqliteDialect) ddl(t table) []string {
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

// migrationLock: SQLite has one writer.
func (sqliteDialect) migrationLock(table) (string, []any) { return "", nil }

// purge: "?" binds in order, so the consumer twice.
func (d sqliteDialect) purge(t table, consumer string, retentionMicros int64, limit int) (string, []any) {
	return d.subselectPurge(t, `processed_at < `+sqliteNow+` - ?`, "?"), []any{consumer, consumer, retentionMicros, limit}
}

func (sqliteDialect) age() string { return sqliteNow + ` - min(processed_at)` }
