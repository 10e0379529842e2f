package watermilloutbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// sqliteDialect is SQLite's SQL. Times are integer microseconds since the
// Unix epoch (UTC).
type sqliteDialect struct {
	standardSQL
	scalarBinds
}

func (sqliteDialect) name() Dialect { return SQLite }

// index: SQLite wants the schema on the index name.
func (d sqliteDialect) index(t table, suffix string) string {
	name := t.base + "_" + suffix
	if t.schema != "" {
		name = t.schema + "." + name
	}
	return d.quoteIdent(name)
}

func (d sqliteDialect) dropIndex(t table, suffix string) string { return d.index(t, suffix) }

func (sqliteDialect) prefix(col string, runes int, p string) string {
	return fmt.Sprintf("substr(%s, 1, %d) = %s", col, runes, p)
}

func (sqliteDialect) now() string { return "CAST(unixepoch('subsec') * 1000000 AS INTEGER)" }

func (d sqliteDialect) shifted(sign, p string) string {
	return "(" + d.now() + " " + sign + " " + p + ")"
}

func (sqliteDialect) epochMicros(expr string) string { return expr }

// ddl: AUTOINCREMENT, so ids are never reused, which the order and fencing
// rules rely on. An index is created on the unqualified table name, the
// schema being on the index's.
func (d sqliteDialect) ddl(t table) []string {
	out := []string{`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid          TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition_key TEXT,
    payload       BLOB    NOT NULL,
    metadata      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (` + d.now() + `),
    available_at  INTEGER NOT NULL DEFAULT (` + d.now() + `),
    attempts      INTEGER NOT NULL DEFAULT 0,
    claim_token   TEXT,
    claimed_until INTEGER,
    claimed_by    TEXT,
    published_at  INTEGER,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT,
    waiting       INTEGER NOT NULL DEFAULT 0
)`}
	out = append(out, d.indexDDL(t, d.quoteIdent(t.base))...)
	return append(out, d.relaysDDL(t)...)
}

func (sqliteDialect) addedColumn(column string) string {
	if column == "waiting" {
		return "INTEGER"
	}
	return "TEXT"
}

// migrate: WAL lets readers (the relay's claims, the application) run
// beside the one writer; it is a property of the file, so setting it once
// here holds for every connection. It cannot change inside a transaction.
// SQLite serialises writers; one transaction makes the rest atomic.
func (sqliteDialect) migrate(ctx context.Context, t table, db database) error {
	if _, err := db.exec(ctx, `PRAGMA journal_mode=WAL`); err != nil {
		return err
	}
	return inTx(ctx, db, func(tx tx) error {
		return t.create(ctx, tx, func(column string) (bool, error) {
			var n int
			err := tx.queryRow(ctx, `SELECT count(*) FROM pragma_table_info(?, ?) WHERE name = ?`,
				t.base, cmp.Or(t.schema, "main"), column).Scan(&n)
			return n > 0, err
		}, nil)
	})
}

func (sqliteDialect) promote(t table, limit int) (string, []any) {
	return `UPDATE ` + t.quoted + ` SET waiting = 0 WHERE id IN (SELECT id FROM ` + t.quoted + ` WHERE ` + duePredicate(t) +
		` ORDER BY available_at LIMIT ?)`, []any{limit}
}

// walk: SQLite uses a row value against correlated columns only for its
// first column, so the next key is looked for in the same topic first,
// then in the next topic. A fixed topic is the cursor's topic (see
// SQLStore.round).
func (sqliteDialect) walk(q claimSQL, topic *string, after keyPos, n int, strict bool) (string, []any) {
	t := q.t
	// from is "t p", or "t c, t p WHERE c.id = k.id AND" with c the
	// current key's head row.
	where := func(from string) string {
		if strings.HasSuffix(from, " AND") {
			return from + " "
		}
		return from + " WHERE "
	}
	sameTopic := func(from, topicExpr, keyExpr string) string {
		return `(SELECT p.id FROM ` + where(from) + prefixed("p.", keyedPredicate) + ` AND p.topic = ` + topicExpr +
			` AND p.partition_key > ` + keyExpr + ` ORDER BY p.topic, p.partition_key, p.id LIMIT 1)`
	}
	nextTopic := func(from, topicExpr string) string {
		if topic != nil {
			return "NULL"
		}
		return `(SELECT p.id FROM ` + where(from) + prefixed("p.", keyedPredicate) + ` AND p.topic > ` + topicExpr +
			` ORDER BY p.topic, p.partition_key, p.id LIMIT 1)`
	}
	self := t.quoted + ` c, ` + t.quoted + ` p WHERE c.id = k.id AND`
	return `WITH RECURSIVE k(id, n) AS (
  SELECT COALESCE(` + sameTopic(t.quoted+` p`, "?1", "?2") + `, ` + nextTopic(t.quoted+` p`, "?1") + `), 1
  UNION ALL
  SELECT COALESCE(` + sameTopic(self, "c.topic", "c.partition_key") + `, ` + nextTopic(self, "c.topic") + `), k.n + 1
  FROM k WHERE k.n < ?3 AND k.id IS NOT NULL
)
` + q.heads(t.quoted+` h JOIN k ON h.id = k.id`, strict) + ` ORDER BY k.n`, []any{after.topic, after.key, n}
}

// lockClause: none; the claim holds the database's write lock.
func (sqliteDialect) lockClause() string        { return "" }
func (sqliteDialect) readCommittedClaims() bool { return false }

// estimateBacklog: SQLite keeps no statistics.
func (sqliteDialect) estimateBacklog(context.Context, database, table, string) (int64, error) {
	return 0, nil
}

func (d sqliteDialect) relaysDDL(t table) []string {
	return []string{`CREATE TABLE IF NOT EXISTS ` + t.relaysTable() + ` (
    id          TEXT    PRIMARY KEY,
    alive_until INTEGER NOT NULL,
    started_at  INTEGER NOT NULL DEFAULT (` + d.now() + `)
)`, d.relaysIndex(t, d.quoteIdent(t.base+"_relays"))}
}

// minSQLiteRelayTTL is the shortest heartbeat a relay keeps on SQLite.
// Every relay and publisher of a SQLite file shares its one write lock,
// which a beat waits for like any write: on a busy file (the relay tests
// under the race detector on a loaded 2-core machine) no beat landed for
// over 3 s and live relays were declared dead, costing duplicates. A
// SQLite file is normally owned by one process, whose relays die together
// and are taken over on its restart, so a longer heartbeat costs little
// there.
const minSQLiteRelayTTL = 15 * time.Second

func (sqliteDialect) minRelayTTL() time.Duration { return minSQLiteRelayTTL }

func (sqliteDialect) versionQuery() string { return `SELECT 'SQLite ' || sqlite_version()` }

func (sqliteDialect) versionAnswer(v string) bool { return strings.HasPrefix(v, "SQLite 3") }

// contention: modernc.org/sqlite's *sqlite.Error, primary code in the low
// byte.
func (sqliteDialect) contention(err error) bool {
	var lite interface{ Code() int }
	if errors.As(err, &lite) {
		switch lite.Code() & 0xff {
		case 5, // SQLITE_BUSY
			6: // SQLITE_LOCKED
			return true
		}
	}
	return false
}

func (sqliteDialect) missingFunction(err error) bool {
	return strings.Contains(err.Error(), "no such function")
}
