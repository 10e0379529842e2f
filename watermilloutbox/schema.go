package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// table holds the validated names one outbox table's SQL is built from.
type table struct {
	dialect Dialect
	name    string // as given, validated
	quoted  string // quoted, possibly schema-qualified
	base    string // unqualified part, for index names
	schema  string // schema part or ""
}

func newTable(d Dialect, name string) (table, error) {
	if err := d.Validate(); err != nil {
		return table{}, err
	}
	if !config.ValidTableName(name) {
		return table{}, fmt.Errorf("%w: %q: want letters, digits and underscores, not starting with a digit, at most 48 characters, optionally schema-qualified",
			ErrInvalidTableName, name)
	}
	t := table{dialect: d, name: name, quoted: d.quoteIdent(name), base: name}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		t.schema, t.base = name[:i], name[i+1:]
	}
	return t, nil
}

// index returns the quoted name of one of the table's indexes. PostgreSQL
// puts an index in its table's schema and rejects a qualified name; SQLite
// wants the schema on the index name instead.
func (t table) index(suffix string) string {
	name := t.base + "_" + suffix
	if t.dialect == SQLite && t.schema != "" {
		name = t.schema + "." + name
	}
	return t.dialect.quoteIdent(name)
}

func (t table) ddl() []string {
	switch t.dialect {
	case PostgreSQL:
		// fillfactor 50: every row is updated at least once (its claim), and
		// the claim columns are in no index, so with room left on the page
		// the update is HOT and touches no index. On full pages each claim
		// wrote a new entry into every index: 500-row claims took 8-14 ms
		// instead of 4-5 ms, and the relay drained 25-40 % slower. The
		// price is pages half full while rows wait, and rows do not wait
		// long. Set on creation only, so a fillfactor chosen later stays.
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid          TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition_key TEXT,
    payload       BYTEA       NOT NULL,
    metadata      JSON        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    claim_token   TEXT,
    claimed_until TIMESTAMPTZ,
    published_at  TIMESTAMPTZ,
    state         TEXT        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT
) WITH (fillfactor = 50)`,
			// The claim path: pending rows in id order. Partial, so the index
			// stays as small as the backlog.
			`CREATE INDEX IF NOT EXISTS ` + t.index("pending_idx") + ` ON ` + t.quoted + ` (id) WHERE state = 'pending'`,
			// The per-key order check: earlier pending rows of the same key.
			`CREATE INDEX IF NOT EXISTS ` + t.index("key_idx") + ` ON ` + t.quoted + ` (topic, partition_key, id) WHERE state = 'pending' AND partition_key IS NOT NULL`,
			// Retention purge of published rows.
			`CREATE INDEX IF NOT EXISTS ` + t.index("published_idx") + ` ON ` + t.quoted + ` (published_at) WHERE state = 'published'`,
		}
	case MySQL:
		// MySQL has no partial indexes and no CREATE INDEX IF NOT EXISTS, so
		// the indexes are declared with the table. Times are UTC whatever the
		// session time zone, as the relay compares them with UTC_TIMESTAMP. The binary collation keeps
		// topics and keys byte-exact, as on the other dialects.
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid          VARCHAR(255) NOT NULL,
    topic         VARCHAR(255) NOT NULL,
    partition_key VARCHAR(255) NULL,
    payload       LONGBLOB     NOT NULL,
    metadata      LONGTEXT     NOT NULL,
    created_at    DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    available_at  DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    attempts      INT          NOT NULL DEFAULT 0,
    claim_token   CHAR(36)     NULL,
    claimed_until DATETIME(6)  NULL,
    published_at  DATETIME(6)  NULL,
    state         VARCHAR(16)  NOT NULL DEFAULT 'pending',
    last_error    TEXT         NULL,
    KEY ` + t.index("pending_idx") + ` (state, id),
    KEY ` + t.index("key_idx") + ` (topic, partition_key, state, id),
    KEY ` + t.index("published_idx") + ` (state, published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
		}
	default: // SQLite
		// Times are integer microseconds since the Unix epoch (UTC).
		// AUTOINCREMENT: ids are never reused, which the order and fencing
		// rules rely on.
		const nowMicros = `(CAST(unixepoch('subsec') * 1000000 AS INTEGER))`
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid          TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition_key TEXT,
    payload       BLOB    NOT NULL,
    metadata      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT ` + nowMicros + `,
    available_at  INTEGER NOT NULL DEFAULT ` + nowMicros + `,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claim_token   TEXT,
    claimed_until INTEGER,
    published_at  INTEGER,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("pending_idx") + ` ON ` + t.base + ` (id) WHERE state = 'pending'`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("key_idx") + ` ON ` + t.base + ` (topic, partition_key, id) WHERE state = 'pending' AND partition_key IS NOT NULL`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("published_idx") + ` ON ` + t.base + ` (published_at) WHERE state = 'published'`,
		}
	}
}

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

func (t table) lockKey() int64 { return lockKey("migrate " + t.name) }

// lockKey hashes s to a non-negative int64 (an advisory lock key).
func lockKey(s string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("watermill-outbox " + s))
	return int64(h.Sum64() >> 1)
}

func (t table) migrate(ctx context.Context, db *sql.DB) error {
	switch t.dialect {
	case PostgreSQL:
		// Concurrent CREATE TABLE IF NOT EXISTS can still fail on
		// PostgreSQL (a unique violation in pg_type), hence the lock.
		return inTx(ctx, db, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, t.lockKey()); err != nil {
				return err
			}
			return execAll(ctx, tx, t.ddl())
		})
	case MySQL:
		// DDL commits implicitly on MySQL, so the lock is a session lock
		// held on one connection.
		conn, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		name := fmt.Sprintf("watermill-outbox-migrate-%x", t.lockKey())
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(?, ?)`, name, int((time.Minute).Seconds())).Scan(&got); err != nil {
			return err
		}
		if !got.Valid || got.Int64 != 1 {
			return errors.New("could not take the migration lock within a minute")
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT RELEASE_LOCK(?)`, name) //nolint:errcheck // released with the session anyway
		return execAll(ctx, conn, t.ddl())
	default:
		// WAL lets readers (the relay's claims, the application) run
		// beside the one writer; it is a property of the file, so setting
		// it once here holds for every connection. It cannot change inside
		// a transaction.
		if _, err := db.ExecContext(ctx, `PRAGMA journal_mode=WAL`); err != nil {
			return err
		}
		// SQLite serialises writers; one transaction makes it atomic.
		return inTx(ctx, db, func(tx *sql.Tx) error { return execAll(ctx, tx, t.ddl()) })
	}
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func execAll(ctx context.Context, db execer, stmts []string) error {
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// inTx runs fn in a transaction, committing when it returns nil.
func inTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}
