package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlerr"
)

// mysqlDialect is MySQL's and MariaDB's SQL. MySQL is reached through
// database/sql only.
type mysqlDialect struct{ scalarBinds }

func (mysqlDialect) name() Dialect { return MySQL }

func (mysqlDialect) quoteIdent(name string) string { return quoteParts(name, "`") }

func (d mysqlDialect) index(t table, suffix string) string {
	return d.quoteIdent(t.base + "_" + suffix)
}
func (d mysqlDialect) dropIndex(t table, suffix string) string { return d.index(t, suffix) }

func (mysqlDialect) prefix(col string, runes int, p string) string {
	return fmt.Sprintf("left(%s, %d) = %s", col, runes, p)
}

func (mysqlDialect) now() string { return "UTC_TIMESTAMP(6)" }

func (mysqlDialect) shifted(sign, p string) string {
	return "UTC_TIMESTAMP(6) " + sign + " INTERVAL " + p + " MICROSECOND"
}

func (mysqlDialect) epochMicros(expr string) string {
	return "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', " + expr + ")"
}

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

// ddl: MySQL has no partial indexes and no CREATE INDEX IF NOT EXISTS, so
// the indexes are declared with the table, led by the columns the partial
// indexes of the other dialects filter on. Times are UTC whatever the
// session time zone, as the relay compares them with UTC_TIMESTAMP. The
// binary collation keeps topics and keys byte-exact, as on the other
// dialects.
func (d mysqlDialect) ddl(t table) []string {
	keys := make([]string, len(mysqlIndexList))
	for i, ix := range mysqlIndexList {
		keys[i] = "KEY " + t.index(ix.suffix) + " (" + ix.columns + ")"
	}
	return append([]string{`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
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
    ` + strings.Join(keys, ",\n    ") + `
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
	}, d.relaysDDL(t)...)
}

func (mysqlDialect) addedColumn(column string) string {
	if column == "waiting" {
		return "TINYINT"
	}
	return "VARCHAR(64) NULL"
}

// migrate: DDL commits implicitly on MySQL, so the lock is a session lock
// held on one connection.
func (mysqlDialect) migrate(ctx context.Context, t table, db database) error {
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
}

// syncIndexes adds the indexes a table an earlier version created lacks,
// and drops the obsolete ones, in one ALTER TABLE.
func (mysqlDialect) syncIndexes(ctx context.Context, t table, db queryer, hasIndex func(string) (bool, error)) error {
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

func (mysqlDialect) promote(t table, limit int) (string, []any) {
	return `UPDATE ` + t.quoted + ` SET waiting = 0 WHERE ` + duePredicate(t) + ` ORDER BY available_at LIMIT ?`, []any{limit}
}

// force names the index MySQL must read: for ORDER BY id … LIMIT it would
// rather walk the primary key, and so every row of the table.
func (mysqlDialect) force(t table, suffix string) string {
	return " FORCE INDEX (" + t.index(suffix) + ")"
}

// keyedTopics: a loose index scan, one descent per group. It allows
// equalities only on the other index columns, so topics of keyless rows
// are listed too; the walk finds no keys in them.
func (d mysqlDialect) keyedTopics(t table) string {
	return `SELECT topic FROM ` + t.quoted + d.force(t, "keyed_idx") + ` WHERE state = 'pending' AND waiting = 0` +
		` GROUP BY state, waiting, topic ORDER BY state, waiting, topic`
}

// walk: a loose index scan of keyed_idx, one descent per key.
func (mysqlDialect) walk(q claimSQL, topic *string, after keyPos, n int, strict bool) (string, []any) {
	t := q.t
	args := []any{after.topic, after.topic, after.key}
	only := ""
	if topic != nil {
		only = " AND topic = ?"
		args = append(args, *topic)
	}
	args = append(args, n)
	return q.heads(`(SELECT topic, partition_key, MIN(id) AS id FROM `+t.quoted+` WHERE `+keyedPredicate+
		` AND (topic > ? OR (topic = ? AND partition_key > ?))`+only+
		` GROUP BY state, waiting, topic, partition_key ORDER BY state, waiting, topic, partition_key LIMIT ?) k JOIN `+
		t.quoted+` h ON h.id = k.id`, strict) + ` ORDER BY h.topic, h.partition_key`, args
}

func (mysqlDialect) keyAfter(_ table, after keyPos) (string, []any) {
	return "(topic > ? OR (topic = ? AND partition_key > ?))", []any{after.topic, after.topic, after.key}
}

// lockClause: the claim locks by primary key in id order, as acks lock
// rows, so claims and acks never deadlock.
func (mysqlDialect) lockClause() string { return " FOR UPDATE SKIP LOCKED" }

// readCommittedClaims: the locking read takes record locks only, no gap
// locks that would block application INSERTs into the table.
func (mysqlDialect) readCommittedClaims() bool { return true }

// purgePublished: MySQL cannot DELETE from a table it selects from in a
// subquery, but takes ORDER BY and LIMIT on DELETE itself.
func (mysqlDialect) purgePublished(t table) string {
	return `DELETE FROM ` + t.quoted + ` WHERE state = 'published' AND published_at <= ` + t.minus(1) + ` ORDER BY published_at LIMIT ?`
}

// statsTopics: a loose index scan of backlog_idx, one descent per group.
func (mysqlDialect) statsTopics(t table) string {
	return `SELECT topic FROM ` + t.quoted + ` WHERE state IN ('pending', 'dead') GROUP BY state, topic`
}

// deadTopics: a loose scan of backlog_idx, grouped by state too, or the
// optimizer reads every dead row instead of one per topic.
func (mysqlDialect) deadTopics(ctx context.Context, db queryer, t table) ([]string, error) {
	topics, err := queryColumn[string](ctx, db, `SELECT topic FROM `+t.quoted+` WHERE state = 'dead' GROUP BY state, topic`)
	slices.Sort(topics)
	return topics, err
}

// estimateBacklog: the range optimizer's estimate of the backlog_idx
// range, from dives into the index. A range (id > 0) rather than an
// equality on the index prefix: the optimizer dives into the index for a
// range, where for an equality it would take the index's average rows per
// value.
func (mysqlDialect) estimateBacklog(ctx context.Context, db database, t table, topic string) (int64, error) {
	rs, err := db.(sqlDB).db.QueryContext(ctx, `EXPLAIN SELECT 1 FROM `+t.quoted+` FORCE INDEX (`+t.index("backlog_idx")+
		`) WHERE state = 'pending' AND topic = ? AND id > 0`, topic)
	if err != nil {
		return 0, err
	}
	defer rs.Close()
	cols, err := rs.Columns()
	if err != nil {
		return 0, err
	}
	var n int64
	for rs.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			return 0, err
		}
		for i, c := range cols {
			if strings.EqualFold(c, "rows") && vals[i] != nil {
				var v int64
				if _, err := fmt.Sscan(fmt.Sprint(asString(vals[i])), &v); err == nil {
					n += v
				}
			}
		}
	}
	return n, rs.Err()
}

func asString(v any) any {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return v
}

// keyGroup: a loose index scan of keyed_idx, one descent per key.
func (mysqlDialect) keyGroup() string { return "state, waiting, topic, partition_key" }

// behind: MariaDB allows no reference to the head in a derived table, so
// the rows behind are counted up to the id of the limit-th of them (found
// with OFFSET), which reads them twice.
func (mysqlDialect) behind(_ table, sameKey func(alias, predicate string) string) string {
	nth := `(SELECT n.id` + sameKey("n", keyedPredicate) + ` ORDER BY n.id LIMIT 1 OFFSET ?)`
	return `(SELECT count(*)` + sameKey("b", keyedPredicate) + ` AND b.id <= COALESCE(` + nth + `, 9223372036854775807))`
}

func (mysqlDialect) relaysDDL(t table) []string {
	return []string{`CREATE TABLE IF NOT EXISTS ` + t.relaysTable() + ` (
    id          VARCHAR(64) NOT NULL PRIMARY KEY,
    alive_until DATETIME(6) NOT NULL,
    started_at  DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY ` + t.index("relays_alive_idx") + ` (alive_until)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`}
}

func (mysqlDialect) minRelayTTL() time.Duration { return 0 }

func (mysqlDialect) versionQuery() string { return `SELECT VERSION()` }

// versionAnswer: MySQL and MariaDB answer "8.4.2" or "10.11.6-MariaDB",
// never "PostgreSQL …".
func (mysqlDialect) versionAnswer(v string) bool { return v != "" && v[0] >= '0' && v[0] <= '9' }

func (mysqlDialect) contention(err error) bool {
	switch sqlerr.MySQLNumber(err) {
	case 1213, // ER_LOCK_DEADLOCK
		1205: // ER_LOCK_WAIT_TIMEOUT
		return true
	}
	return false
}

// missingFunction: ER_SP_DOES_NOT_EXIST, "FUNCTION … does not exist".
func (mysqlDialect) missingFunction(err error) bool { return sqlerr.MySQLNumber(err) == 1305 }
