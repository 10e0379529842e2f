package watermilloutbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// postgresDialect is PostgreSQL's SQL.
type postgresDialect struct{ standardSQL }

func (postgresDialect) name() Dialect { return PostgreSQL }

func (postgresDialect) placeholder(n int) string { return "$" + strconv.Itoa(n) }

// index: PostgreSQL puts an index in its table's schema and rejects a
// qualified name.
func (d postgresDialect) index(t table, suffix string) string {
	return d.quoteIdent(t.base + "_" + suffix)
}

// dropIndex: DROP INDEX wants the schema.
func (d postgresDialect) dropIndex(t table, suffix string) string {
	if t.schema != "" {
		return d.quoteIdent(t.schema + "." + t.base + "_" + suffix)
	}
	return d.index(t, suffix)
}

func (postgresDialect) idList(n int, ids []int64) (string, []any) {
	return "id = ANY($" + strconv.Itoa(n) + ")", []any{ids}
}

func (postgresDialect) prefix(col string, runes int, p string) string {
	return fmt.Sprintf("left(%s, %d) = %s", col, runes, p)
}

func (postgresDialect) now() string { return "now()" }

func (postgresDialect) shifted(sign, p string) string {
	return "now() " + sign + " (" + p + "::bigint * interval '1 microsecond')"
}

func (postgresDialect) epochMicros(expr string) string {
	return "(extract(epoch FROM " + expr + ") * 1000000)::bigint"
}

// ddl: fillfactor 50: every row is updated at least once (its claim), and
// the claim columns are in no index, so with room left on the page the
// update is HOT and touches no index. On full pages each claim wrote a new
// entry into every index: 500-row claims took 8-14 ms instead of 4-5 ms,
// and the relay drained 25-40 % slower. The price is pages half full while
// rows wait, and rows do not wait long. Set on creation only, so a
// fillfactor chosen later stays.
//
// Autovacuum: a queue table deletes every row it inserts, so its dead rows
// far outnumber its live ones, and the default trigger (20 % of the live
// rows) says little; at every 1,000 dead rows, unthrottled, vacuum keeps
// the table and its indexes from growing (see Maintain for a server with
// autovacuum off).
func (d postgresDialect) ddl(t table) []string {
	out := []string{`CREATE TABLE IF NOT EXISTS ` + t.quoted + ` (
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
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)`}
	out = append(out, d.indexDDL(t, t.quoted)...)
	return append(out, d.relaysDDL(t)...)
}

func (postgresDialect) addedColumn(column string) string {
	if column == "waiting" {
		return "SMALLINT"
	}
	return "TEXT"
}

// migrate: concurrent CREATE TABLE IF NOT EXISTS can still fail on
// PostgreSQL (a unique violation in pg_type), hence the lock.
func (postgresDialect) migrate(ctx context.Context, t table, db database) error {
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
}

// promote: the same statement sets the claim's plan settings, local to
// its transaction: a queue table's statistics are nearly always stale (a
// backlog appears and drains between two autovacuum runs), and with an
// estimate of a few pending rows the planner prefers a bitmap scan of
// every candidate and a sort to an index walk that stops at the limit
// (measured: 200 ms instead of 4 ms per claim on a fresh 20,000-row
// backlog).
func (postgresDialect) promote(t table, limit int) (string, []any) {
	return `WITH p AS (UPDATE ` + t.quoted + ` SET waiting = 0 WHERE id IN (SELECT id FROM ` + t.quoted + ` WHERE ` + duePredicate(t) +
		` ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING 1)
SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), (SELECT count(*) FROM p)`, []any{limit}
}

// walk: one recursion step per key, each finding the next key's first row
// with a single descent of keyed_idx.
func (postgresDialect) walk(q claimSQL, topic *string, after keyPos, n int, strict bool) (string, []any) {
	t := q.t
	args := []any{after.topic, after.key, n}
	only := ""
	if topic != nil {
		only = " AND topic = $4"
		args = append(args, *topic)
	}
	next := func(from string) string {
		return `SELECT topic, partition_key, id FROM ` + t.quoted + ` WHERE ` + keyedPredicate + ` AND (topic, partition_key) > ` + from + only +
			` ORDER BY topic, partition_key, id LIMIT 1`
	}
	return `WITH RECURSIVE k(topic, partition_key, id, n) AS (
  (SELECT topic, partition_key, id, 1 FROM (` + next("($1, $2)") + `) f)
  UNION ALL
  (SELECT x.topic, x.partition_key, x.id, k.n + 1 FROM k CROSS JOIN LATERAL (` + next("(k.topic, k.partition_key)") + `) x WHERE k.n < $3)
)
` + q.heads(t.quoted+` h JOIN k ON h.id = k.id`, strict) + ` ORDER BY k.n`, args
}

// runs: every key's run in one statement, a LATERAL join over arrays.
func (postgresDialect) runs(q claimSQL, heads []keyHead, n int) (string, []any) {
	topics := make([]string, len(heads))
	keys := make([]string, len(heads))
	ids := make([]int64, len(heads))
	for i, h := range heads {
		topics[i], keys[i], ids[i] = h.topic, h.key, h.id
	}
	return `SELECT c.topic, c.partition_key, r.id, ` + q.free("r.") + `
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(topic, partition_key, head)
CROSS JOIN LATERAL (SELECT id, available_at, claimed_until, claimed_by FROM ` + q.t.quoted + ` WHERE ` + keyedPredicate +
		` AND topic = c.topic AND partition_key = c.partition_key AND id >= c.head ORDER BY id LIMIT $4) r`, []any{topics, keys, ids, n}
}

// maxChainKeys: the LATERAL join reads any number in one.
func (postgresDialect) maxChainKeys() int { return math.MaxInt }

// claimFree claims the candidates that are still free, skipping rows
// another transaction holds, and returns them with whose claim each held
// (claimSQL.takenFrom).
func (postgresDialect) claimFree(q claimSQL, token string, lease time.Duration, ids []int64) (string, []any, bool) {
	return `UPDATE ` + q.t.quoted + ` t SET claim_token = $1, claimed_until = ` + q.t.plus(2) + `, claimed_by = $4` +
		` FROM (SELECT id, ` + q.takenFrom("") + ` AS taken_from FROM ` + q.t.quoted + ` WHERE id = ANY($3) AND ` + q.takeFree("") +
		` FOR UPDATE SKIP LOCKED) c WHERE t.id = c.id
RETURNING ` + q.t.rowColumns("t.") + `, c.taken_from`, []any{token, lease.Microseconds(), ids, q.holder()}, true
}

// lockClause: unused, claimFree takes in one statement.
func (postgresDialect) lockClause() string        { return " FOR UPDATE SKIP LOCKED" }
func (postgresDialect) readCommittedClaims() bool { return false }
func (postgresDialect) pipelined() bool           { return true }

// estimateBacklog: the row estimate of the backlog_idx scan for the topic
// (EXPLAIN), from the table's statistics.
func (postgresDialect) estimateBacklog(ctx context.Context, db database, t table, topic string) (int64, error) {
	var plan []byte
	if err := db.queryRow(ctx, `EXPLAIN (FORMAT JSON) SELECT 1 FROM `+t.quoted+` WHERE `+backlogPredicate+` AND topic = $1`, topic).Scan(&plan); err != nil {
		return 0, err
	}
	var out []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal(plan, &out); err != nil || len(out) == 0 {
		return 0, fmt.Errorf("read the plan: %v", err)
	}
	return int64(out[0].Plan.Rows), nil
}

// vacuum: autovacuum may be off for the server or for the table.
func (postgresDialect) vacuum(t table) (string, string) {
	return `SELECT current_setting('autovacuum')::bool AND coalesce((
  SELECT option_value::bool FROM pg_options_to_table((SELECT reloptions FROM pg_class WHERE oid = $1::regclass))
  WHERE option_name = 'autovacuum_enabled'), true)`, `VACUUM (SKIP_LOCKED) ` + t.quoted
}

// blockedHeads: one plan for every key: planning a part per key cost more
// than running it.
func (postgresDialect) blockedHeads(t table, keys []keyPos, strict bool) (string, []any) {
	topics, names := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		topics[i], names[i] = k.topic, k.key
	}
	firstOf := func(predicate string) string {
		return `COALESCE((SELECT min(id) FROM ` + t.quoted + ` WHERE ` + predicate + ` AND topic = c.topic AND partition_key = c.key), 0)`
	}
	dead := "0"
	if strict {
		dead = firstOf(deadKeyPredicate)
	}
	return `SELECT c.i - 1, ` + firstOf(waitingKeyPredicate) + `, ` + dead + `, ` + firstOf(keyedPredicate) +
		` FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS c(topic, key, i)`, []any{topics, names}
}

// notify: sent inside the publishing transaction, PostgreSQL delivers it
// on commit, when the rows are visible, and drops it on rollback. Table
// names are validated identifiers, so the channel needs no quoting.
func (postgresDialect) notify(channel string) string {
	return `SELECT pg_notify('` + channel + `', '')`
}

func (d postgresDialect) relaysDDL(t table) []string {
	return []string{`CREATE TABLE IF NOT EXISTS ` + t.relaysTable() + ` (
    id          TEXT        PRIMARY KEY,
    alive_until TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)`, d.relaysIndex(t, t.relaysTable())}
}

func (postgresDialect) minRelayTTL() time.Duration { return 0 }

func (postgresDialect) versionQuery() string { return `SELECT version()` }

func (postgresDialect) versionAnswer(v string) bool { return strings.HasPrefix(v, "PostgreSQL") }

// pgState is the SQLSTATE of a pgconn.PgError (pgx, also through
// database/sql) in err's chain, or "".
func pgState(err error) string {
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		return pg.SQLState()
	}
	return ""
}

func (postgresDialect) contention(err error) bool {
	switch pgState(err) {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"55P03": // lock_not_available
		return true
	}
	return false
}

func (postgresDialect) missingFunction(err error) bool { return pgState(err) == "42883" } // undefined_function
