package watermilloutbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

// The claim reads partial indexes that each hold only rows a claim may
// take, so that what a claim costs follows the rows it returns
// (claim.go): unkeyed_idx, keyless rows in id order; keyed_idx, keyed rows
// by key, which claims walk one key at a time (a key whose head is blocked
// costs one index descent, its tail nothing); and, for rows backing off
// (waiting = 1, still state 'pending'), waiting_idx by the time they are
// due again and waiting_key_idx by key, which the ordered claims consult.
// A claim changes only claim_token, claimed_until and claimed_by, which no
// index covers, so on PostgreSQL it stays a HOT update (see fillfactor below).
//
// backlog_idx and dead_idx hold the undelivered and the dead rows by topic,
// oldest first: Stats reads each topic's oldest rows through them (never
// the published rows), ListDead pages through a topic's dead rows.
// dead_key_idx holds the dead keyed rows by key: under StrictOrder a claim
// looks a key's dead rows up there, and BlockedKeys lists them.
func (t table) ddl() []string { return t.d.ddl(t) }

// The partial indexes' predicates. The claim's queries repeat them word for
// word, so that PostgreSQL and SQLite see that an index applies.
const (
	unkeyedPredicate    = `state = 'pending' AND waiting = 0 AND partition_key IS NULL`
	keyedPredicate      = `state = 'pending' AND waiting = 0 AND partition_key IS NOT NULL`
	waitingPredicate    = `state = 'pending' AND waiting = 1`
	waitingKeyPredicate = `state = 'pending' AND waiting = 1 AND partition_key IS NOT NULL`
	// id > 0 (always true) keeps the planner from reading backlog_idx for
	// a claim's statements, which do not say it: on a table without
	// statistics PostgreSQL took it for the per-key runs, filtering the
	// other keys' rows (70 ms instead of 2 for one claim).
	backlogPredicate = `state = 'pending' AND id > 0`
	// deadKeyPredicate: dead keyed rows by key, which hold their key under
	// StrictOrder and are listed by BlockedKeys (dead_key_idx; keyed_idx on
	// MySQL, where dead rows have waiting = 0).
	deadKeyPredicate = `state = 'dead' AND waiting = 0 AND partition_key IS NOT NULL`
)

// obsoleteIndexes are the index suffixes an earlier version created, which
// Migrate drops: the claim no longer reads them, and each cost every insert.
var obsoleteIndexes = []string{"pending_idx", "key_idx"}

// DDL returns the statements that create the outbox table and its indexes,
// separated by ";\n", for pasting into a migration tool; SQLStore.Migrate
// runs the same statements. They are idempotent (IF NOT EXISTS). The table
// name is validated first: ErrInvalidTableName.
func DDL(d Dialect, tableName string) (string, error) {
	t, err := newTable(d, tableName)
	if err != nil {
		return "", err
	}
	return strings.Join(t.ddl(), ";\n") + ";\n", nil
}

func (t table) lockKey() int64 { return sqlident.Hash("migrate " + t.name) }

// migrate runs the DDL, under a database-wide lock.
func (t table) migrate(ctx context.Context, db database) error { return t.d.migrate(ctx, t, db) }

// create runs the DDL, then brings a table an earlier version created up
// to date: it adds the waiting column (marking the rows then backing off),
// the claimed_by column and the relay registry, the claim's indexes, and drops the indexes the claim no longer reads.
// hasColumn and hasIndex look in the catalog; hasIndex is nil where
// CREATE INDEX IF NOT EXISTS and DROP INDEX IF EXISTS do the looking.
func (t table) create(ctx context.Context, db queryer, hasColumn, hasIndex func(name string) (bool, error)) error {
	ddl := t.ddl() // the table, then its indexes (but on MySQL)
	if err := execAll(ctx, db, ddl[:1]); err != nil {
		return err
	}
	has, err := hasColumn("waiting")
	if err != nil {
		return fmt.Errorf("look up the waiting column: %w", err)
	}
	if !has {
		if err := execAll(ctx, db, []string{
			`ALTER TABLE ` + t.quoted + ` ADD COLUMN waiting ` + t.d.addedColumn("waiting") + ` NOT NULL DEFAULT 0`,
			// Rows backing off are out of the claim's indexes from now on.
			`UPDATE ` + t.quoted + ` SET waiting = 1 WHERE state = 'pending' AND claim_token IS NULL AND available_at > ` + t.now(),
		}); err != nil {
			return err
		}
	}
	// claimed_by names the relay holding a claim (relays.go); rows claimed
	// before it existed are held by their lease alone.
	if has, err = hasColumn("claimed_by"); err != nil {
		return fmt.Errorf("look up the claimed_by column: %w", err)
	} else if !has {
		if err := execAll(ctx, db, []string{`ALTER TABLE ` + t.quoted + ` ADD COLUMN claimed_by ` + t.d.addedColumn("claimed_by")}); err != nil {
			return err
		}
	}
	if err := execAll(ctx, db, ddl[1:]); err != nil { // the indexes (not MySQL's) and the relay registry
		return err
	}
	return t.d.syncIndexes(ctx, t, db, hasIndex)
}

func execAll(ctx context.Context, db queryer, stmts []string) error {
	for _, q := range stmts {
		if _, err := db.exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}
