package watermilloutbox

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
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
		//
		// Autovacuum: a queue table deletes every row it inserts, so its
		// dead rows far outnumber its live ones, and the default trigger
		// (20 % of the live rows) says little; at every 1,000 dead rows,
		// unthrottled, vacuum keeps the table and its indexes from growing
		// (see Maintain for a server with autovacuum off).
		return append([]string{
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
    claimed_by    TEXT,
    published_at  TIMESTAMPTZ,
    state         TEXT        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT,
    waiting       SMALLINT    NOT NULL DEFAULT 0
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("unkeyed_idx") + ` ON ` + t.quoted + ` (id) WHERE ` + unkeyedPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("keyed_idx") + ` ON ` + t.quoted + ` (topic, partition_key, id) WHERE ` + keyedPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("waiting_idx") + ` ON ` + t.quoted + ` (available_at) WHERE ` + waitingPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("waiting_key_idx") + ` ON ` + t.quoted + ` (topic, partition_key, id) WHERE ` + waitingKeyPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("published_idx") + ` ON ` + t.quoted + ` (published_at) WHERE state = 'published'`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("backlog_idx") + ` ON ` + t.quoted + ` (topic, id) WHERE ` + backlogPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("dead_idx") + ` ON ` + t.quoted + ` (topic, id) WHERE state = 'dead'`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("dead_key_idx") + ` ON ` + t.quoted + ` (topic, partition_key, id) WHERE ` + deadKeyPredicate,
		}, t.relaysDDL()...)
	case MySQL:
		// MySQL has no partial indexes and no CREATE INDEX IF NOT EXISTS, so
		// the indexes are declared with the table, led by the columns the
		// partial indexes of the other dialects filter on. Times are UTC
		// whatever the session time zone, as the relay compares them with
		// UTC_TIMESTAMP. The binary collation keeps topics and keys
		// byte-exact, as on the other dialects.
		return append([]string{
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
    claimed_by    VARCHAR(64)  NULL,
    published_at  DATETIME(6)  NULL,
    state         VARCHAR(16)  NOT NULL DEFAULT 'pending',
    last_error    TEXT         NULL,
    waiting       TINYINT      NOT NULL DEFAULT 0,
    ` + mysqlIndexes(t, ",\n    ") + `
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
		}, t.relaysDDL()...)
	default: // SQLite
		// Times are integer microseconds since the Unix epoch (UTC).
		// AUTOINCREMENT: ids are never reused, which the order and fencing
		// rules rely on.
		const nowMicros = `(CAST(unixepoch('subsec') * 1000000 AS INTEGER))`
		return append([]string{
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
    claimed_by    TEXT,
    published_at  INTEGER,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT,
    waiting       INTEGER NOT NULL DEFAULT 0
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("unkeyed_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (id) WHERE ` + unkeyedPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("keyed_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (topic, partition_key, id) WHERE ` + keyedPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("waiting_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (available_at) WHERE ` + waitingPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("waiting_key_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (topic, partition_key, id) WHERE ` + waitingKeyPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("published_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (published_at) WHERE state = 'published'`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("backlog_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (topic, id) WHERE ` + backlogPredicate,
			`CREATE INDEX IF NOT EXISTS ` + t.index("dead_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (topic, id) WHERE state = 'dead'`,
			`CREATE INDEX IF NOT EXISTS ` + t.index("dead_key_idx") + ` ON ` + t.dialect.quoteIdent(t.base) + ` (topic, partition_key, id) WHERE ` + deadKeyPredicate,
		}, t.relaysDDL()...)
	}
}

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

// mysqlIndex is one of MySQL's indexes: its name suffix and columns.
type mysqlIndex struct{ suffix, columns string }

// mysqlIndexList is MySQL's version of the partial indexes: keyed_idx also
// serves the per-key lookups of waiting rows (waiting = 1), backlog_idx the
// dead rows by topic (state 'dead') too.
var mysqlIndexList = []mysqlIndex{
	{"unkeyed_idx", "state, waiting, partition_key, id"},
	{"keyed_idx", "state, waiting, topic, partition_key, id"},
	{"waiting_idx", "state, waiting, available_at"},
	{"published_idx", "state, published_at"},
	{"backlog_idx", "state, topic, id"},
}

func mysqlIndexes(t table, sep string) string {
	parts := make([]string, len(mysqlIndexList))
	for i, ix := range mysqlIndexList {
		parts[i] = "KEY " + t.index(ix.suffix) + " (" + ix.columns + ")"
	}
	return strings.Join(parts, sep)
}

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

func (t table) lockKey() int64 { return lockKey("migrate " + t.name) }

// lockKey hashes s to a non-negative int64 (an advisory lock key).
func lockKey(s string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("watermill-outbox " + s))
	return int64(h.Sum64() >> 1)
}

func (t table) migrate(ctx context.Context, db database) error {
	switch t.dialect {
	case PostgreSQL:
		// Concurrent CREATE TABLE IF NOT EXISTS can still fail on
		// PostgreSQL (a unique violation in pg_type), hence the lock.
		return inTx(ctx, db, func(tx tx) error {
			if _, err := tx.exec(ctx, `SELECT pg_advisory_xact_lock($1)`, t.lockKey()); err != nil {
				return err
			}
			return t.create(ctx, tx, func(column string) (bool, error) {
				var n int
				err := tx.queryRow(ctx, `SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`,
					t.quoted, column).Scan(&n)
				return n > 0, err
			}, nil)
		})
	case MySQL:
		// DDL commits implicitly on MySQL, so the lock is a session lock
		// held on one connection. (MySQL is reached through database/sql
		// only.)
		conn, err := db.(sqlDB).db.Conn(ctx)
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
		// information_schema names the schema; an unqualified table is in
		// the connection's database.
		schema, schemaArgs := "DATABASE()", []any{}
		if t.schema != "" {
			schema, schemaArgs = "?", []any{t.schema}
		}
		count := func(q string, args ...any) (bool, error) {
			var n int
			err := conn.QueryRowContext(ctx, q, append(slices.Clone(schemaArgs), args...)...).Scan(&n)
			return n > 0, err
		}
		return t.create(ctx, sqlQueryer{e: conn}, func(column string) (bool, error) {
			return count(`SELECT count(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = `+schema+` AND TABLE_NAME = ? AND COLUMN_NAME = ?`, t.base, column)
		}, func(index string) (bool, error) {
			return count(`SELECT count(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = `+schema+` AND TABLE_NAME = ? AND INDEX_NAME = ?`, t.base, index)
		})
	default:
		// WAL lets readers (the relay's claims, the application) run
		// beside the one writer; it is a property of the file, so setting
		// it once here holds for every connection. It cannot change inside
		// a transaction.
		if _, err := db.exec(ctx, `PRAGMA journal_mode=WAL`); err != nil {
			return err
		}
		// SQLite serialises writers; one transaction makes it atomic.
		return inTx(ctx, db, func(tx tx) error {
			return t.create(ctx, tx, func(column string) (bool, error) {
				var n int
				err := tx.queryRow(ctx, `SELECT count(*) FROM pragma_table_info(?, ?) WHERE name = ?`,
					t.base, cmp.Or(t.schema, "main"), column).Scan(&n)
				return n > 0, err
			}, nil)
		})
	}
}

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
		column := map[Dialect]string{PostgreSQL: "SMALLINT", MySQL: "TINYINT", SQLite: "INTEGER"}[t.dialect]
		if err := execAll(ctx, db, []string{
			`ALTER TABLE ` + t.quoted + ` ADD COLUMN waiting ` + column + ` NOT NULL DEFAULT 0`,
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
		column := map[Dialect]string{PostgreSQL: "TEXT", MySQL: "VARCHAR(64) NULL", SQLite: "TEXT"}[t.dialect]
		if err := execAll(ctx, db, []string{`ALTER TABLE ` + t.quoted + ` ADD COLUMN claimed_by ` + column}); err != nil {
			return err
		}
	}
	if err := execAll(ctx, db, ddl[1:]); err != nil { // the indexes (not MySQL's) and the relay registry
		return err
	}
	if t.dialect != MySQL {
		// The CREATE INDEX IF NOT EXISTS statements made the missing ones.
		var drops []string
		for _, suffix := range obsoleteIndexes {
			drops = append(drops, `DROP INDEX IF EXISTS `+t.qualifiedIndex(suffix))
		}
		return execAll(ctx, db, drops)
	}
	var alter []string
	for _, ix := range mysqlIndexList {
		has, err := hasIndex(t.base + "_" + ix.suffix)
		if err != nil {
			return err
		}
		if !has {
			alter = append(alter, "ADD KEY "+t.index(ix.suffix)+" ("+ix.columns+")")
		}
	}
	for _, suffix := range obsoleteIndexes {
		has, err := hasIndex(t.base + "_" + suffix)
		if err != nil {
			return err
		}
		if has {
			alter = append(alter, "DROP KEY "+t.index(suffix))
		}
	}
	if len(alter) == 0 {
		return nil
	}
	return execAll(ctx, db, []string{`ALTER TABLE ` + t.quoted + ` ` + strings.Join(alter, ", ")})
}

// qualifiedIndex names one of the table's indexes for DROP INDEX, which
// wants the schema on PostgreSQL too.
func (t table) qualifiedIndex(suffix string) string {
	if t.dialect == PostgreSQL && t.schema != "" {
		return t.dialect.quoteIdent(t.schema + "." + t.base + "_" + suffix)
	}
	return t.index(suffix)
}

// now is the database clock, in the form the dialect compares times with.
func (t table) now() string {
	switch t.dialect {
	case PostgreSQL:
		return "now()"
	case MySQL:
		return "UTC_TIMESTAMP(6)"
	default:
		return "CAST(unixepoch('subsec') * 1000000 AS INTEGER)"
	}
}

func execAll(ctx context.Context, db queryer, stmts []string) error {
	for _, q := range stmts {
		if _, err := db.exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}
