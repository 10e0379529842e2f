package inbox

import (
	"context"
	"errors"
	"strings"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// table holds the validated names the inbox's SQL is built from, and its
// dialect's SQL (d).
type table struct {
	d      sqlDialect
	name   string // as given, validated
	quoted string // quoted, possibly schema-qualified
	base   string // unqualified part, for the index name
	schema string // schema part or ""
}

func newTable(d outbox.Dialect, name string) table {
	sd := dialectOf(d)
	t := table{d: sd, name: name, quoted: sd.quoteIdent(name), base: name}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		t.schema, t.base = name[:i], name[i+1:]
	}
	return t
}

// p is the bind marker of the n-th (1-based) argument.
func (t table) p(n int) string { return t.d.placeholder(n) }

// index names the purge index.
func (t table) index() string { return t.d.index(t) }

func (t table) ddl() []string { return t.d.ddl(t) }

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

// migrate runs the DDL in one transaction, after the dialect's migration
// lock if it needs one.
func (t table) migrate(ctx context.Context, db database) error {
	tx, err := db.begin(ctx)
	if err != nil {
		return err
	}
	if q, args := t.d.migrationLock(t); q != "" {
		if _, err := tx.exec(ctx, q, args...); err != nil {
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

// insertQuery records a delivery. It returns one affected row for a new
// message and none for a duplicate, which waits for, then sees, a
// concurrent delivery's uncommitted row (see the package comment), or, on
// MySQL, fails with a duplicate-key error (sqlDialect.duplicate).
func (t table) insertQuery() string { return t.d.insert(t) }

// purgeQuery deletes at most a batch of one consumer's records older than
// the retention, in microseconds.
func (t table) purgeQuery(consumer string, retentionMicros int64, limit int) (string, []any) {
	return t.d.purge(t, consumer, retentionMicros, limit)
}

// statsQuery lists the consumers with their record counts and the age of
// their oldest record in microseconds.
func (t table) statsQuery() string {
	return `SELECT consumer, count(*), ` + t.d.age() + ` FROM ` + t.quoted + ` GROUP BY consumer ORDER BY consumer`
}

// rollback rolls tx back after err, returning both.
func rollback(ctx context.Context, tx txn, err error) error {
	return errors.Join(err, tx.rollback(context.WithoutCancel(ctx)))
}
