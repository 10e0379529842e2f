package inbox

import (
	"fmt"
	"strconv"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

type postgresDialect struct{ standardSQL }

func (postgresDialect) placeholder(n int) string { return "$" + strconv.Itoa(n) }

// index: PostgreSQL puts the index in the table's schema.
func (d postgresDialect) index(t table) string { return d.quoteIdent(t.base + "_processed_idx") }

func (d postgresDialect) ddl(t table) []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    consumer     TEXT        NOT NULL,
    message_uuid TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_uuid)
)`,
		`CREATE INDEX IF NOT EXISTS ` + t.index() + ` ON ` + t.quoted + ` (consumer, processed_at)`,
	}
}

// migrationLock: concurrent CREATE TABLE IF NOT EXISTS can still fail (a
// unique violation in pg_type).
func (postgresDialect) migrationLock(t table) (string, []any) {
	return `SELECT pg_advisory_xact_lock($1)`, []any{sqlident.Hash("migrate inbox " + t.name)}
}

func (d postgresDialect) purge(t table, consumer string, retentionMicros int64, limit int) (string, []any) {
	return d.subselectPurge(t, `processed_at < now() - ($2::bigint * interval '1 microsecond')`, "$3"),
		[]any{consumer, retentionMicros, limit}
}

func (postgresDialect) age() string {
	return `(extract(epoch FROM now() - min(processed_at)) * 1000000)::bigint`
}

// pgxDialect is the Dialect of an inbox on a pgx pool: PostgreSQL, the
// only database pgx speaks; empty means PostgreSQL.
func pgxDialect(d outbox.Dialect) (outbox.Dialect, error) {
	if d != "" && d != outbox.PostgreSQL {
		return "", fmt.Errorf("inbox: invalid config: Dialect: %q on a pgx pool, want %q", d, outbox.PostgreSQL)
	}
	return outbox.PostgreSQL, nil
}
