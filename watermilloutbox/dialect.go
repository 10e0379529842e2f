package watermilloutbox

import (
	"context"
	"fmt"
	"time"
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

// Validate returns ErrUnknownDialect for anything but the constants above.
func (d Dialect) Validate() error {
	if d.sql() == nil {
		return fmt.Errorf("%w: %q (want postgres, mysql or sqlite)", ErrUnknownDialect, string(d))
	}
	return nil
}

// dialects are the databases the store speaks, one type each
// (dialect_postgres.go, dialect_mysql.go, dialect_sqlite.go).
var dialects = []sqlDialect{postgresDialect{}, mysqlDialect{}, sqliteDialect{}}

// sql is the SQL of d; nil for an unknown name.
func (d Dialect) sql() sqlDialect {
	for _, sd := range dialects {
		if sd.name() == d {
			return sd
		}
	}
	return nil
}

// sqlDialect is one database's SQL: every statement and fragment the store
// writes differently for it, and how to read its driver's errors. The
// store maps its Dialect to one once (newTable); nothing else asks which
// database it is.
type sqlDialect interface {
	name() Dialect

	// placeholder is the bind marker of the n-th (1-based) argument.
	placeholder(n int) string
	// quoteIdent quotes a validated, possibly schema-qualified name part
	// by part, so reserved words such as "order" work as table names.
	quoteIdent(name string) string
	// index is the quoted name of one of the table's indexes (suffix
	// "unkeyed_idx", …) as CREATE INDEX and index hints name it;
	// dropIndex as DROP INDEX does.
	index(t table, suffix string) string
	dropIndex(t table, suffix string) string
	// idList binds ids from placeholder n on and returns the condition
	// that id is one of them.
	idList(n int, ids []int64) (string, []any)
	// prefix is the condition that col's first runes characters equal
	// the value bound at placeholder p.
	prefix(col string, runes int, p string) string

	// now is the database clock, in the form the table's times are
	// compared in.
	now() string
	// shifted is now plus or minus (sign) the microseconds bound at p.
	shifted(sign, p string) string
	// epochMicros is the time expression as microseconds since the Unix
	// epoch, so one Scan reads it whatever the driver's time settings.
	epochMicros(expr string) string

	// ddl creates the outbox table, then its indexes, then the relay
	// registry (relays.go); addedColumn is the type of a column a later
	// version added ("waiting", "claimed_by").
	ddl(t table) []string
	addedColumn(column string) string
	// migrate runs the DDL (table.create) under a database-wide lock;
	// syncIndexes, its last step, makes the table's indexes those the
	// DDL names (hasIndex looks one up in the catalog; nil where the
	// DDL's IF NOT EXISTS does the looking).
	migrate(ctx context.Context, t table, db database) error
	syncIndexes(ctx context.Context, t table, db queryer, hasIndex func(name string) (bool, error)) error

	// The claim's statements (claimsql.go).
	promote(t table, limit int) (string, []any)
	force(t table, suffix string) string
	keyedTopics(t table) string
	walk(q claimSQL, topic *string, after keyPos, n int, strict bool) (string, []any)
	runs(q claimSQL, heads []keyHead, n int) (string, []any)
	// keyAfter is the condition that a row's key comes after 'after',
	// binding it from placeholder 1.
	keyAfter(t table, after keyPos) (string, []any)
	// maxChainKeys bounds the keys one claim reads the run of.
	maxChainKeys() int
	// claimFree locks, claims and returns the candidates still free in
	// one statement; ok is false where the claim locks them first
	// (claimSQL.lockFree), then claims what it keeps (claimIDs).
	claimFree(q claimSQL, token string, lease time.Duration, ids []int64) (string, []any, bool)
	// lockClause ends claimSQL.lockFree's SELECT.
	lockClause() string
	// readCommittedClaims: a claim runs at READ COMMITTED, not the
	// database's default isolation.
	readCommittedClaims() bool
	// pipelined: on a pgx connection the claim sends its statements in
	// batches (pipeTx).
	pipelined() bool

	// purgePublished deletes up to the limit bound at placeholder 2 of
	// the published rows older than the microseconds bound at 1.
	purgePublished(t table) string
	// statsTopics lists the topics with undelivered or dead rows;
	// deadTopics those with dead rows, in order.
	statsTopics(t table) string
	deadTopics(ctx context.Context, db queryer, t table) ([]string, error)
	// estimateBacklog is the planner's estimate of topic's undelivered
	// rows; 0 where the database keeps no statistics.
	estimateBacklog(ctx context.Context, db database, t table, topic string) (int64, error)
	// vacuum returns a query answering whether the table is vacuumed
	// automatically, and the statement that vacuums it; both "" where
	// the table needs nothing (SQLStore.Maintain).
	vacuum(t table) (autovacuum, vacuum string)
	// keyGroup is what BlockedKeys groups the keys it lists by.
	keyGroup() string
	// blockedHeads reads, for each key, its first waiting row, its first
	// dead row (when strict, else 0) and its first other pending row, by
	// the key's index in keys.
	blockedHeads(t table, keys []keyPos, strict bool) (string, []any)
	// behind counts the rows behind a blocked head, at most one more
	// than the limit bound at placeholder 1 (see SQLStore.headsQuery).
	behind(t table, sameKey func(alias, predicate string) string) string

	// notify is the statement that wakes the relays listening on
	// channel; "" for a database with no notifications.
	notify(channel string) string
	// relaysDDL creates the relay registry (relays.go).
	relaysDDL(t table) []string
	// minRelayTTL is the shortest heartbeat a relay keeps.
	minRelayTTL() time.Duration

	// versionQuery asks the database for its version in the dialect's
	// own words; versionAnswer reports whether the answer is this
	// dialect's (probe.go).
	versionQuery() string
	versionAnswer(version string) bool
	// contention reports whether err, of this dialect's driver, only
	// says a concurrent transaction got in the way; missingFunction
	// whether it says the function called does not exist.
	contention(err error) bool
	missingFunction(err error) bool
}
