package watermilloutbox

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// What two dialects share, written once: standardSQL is PostgreSQL's and
// SQLite's (partial indexes, row values, no loose index scan), scalarBinds
// MySQL's and SQLite's (one value per placeholder: no arrays, no LATERAL).

// standardSQL is embedded by postgresDialect and sqliteDialect.
type standardSQL struct{}

func (standardSQL) quoteIdent(name string) string { return quoteParts(name, `"`) }

// quoteParts quotes each dot-separated part of name with q.
func quoteParts(name, q string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = q + p + q
	}
	return strings.Join(parts, ".")
}

// indexDDL creates the partial indexes (see table.ddl) on the table named
// on (which each dialect spells its own way).
func (standardSQL) indexDDL(t table, on string) []string {
	create := func(suffix, columns, predicate string) string {
		return `CREATE INDEX IF NOT EXISTS ` + t.index(suffix) + ` ON ` + on + ` (` + columns + `) WHERE ` + predicate
	}
	return []string{
		create("unkeyed_idx", "id", unkeyedPredicate),
		create("keyed_idx", "topic, partition_key, id", keyedPredicate),
		create("waiting_idx", "available_at", waitingPredicate),
		create("waiting_key_idx", "topic, partition_key, id", waitingKeyPredicate),
		create("published_idx", "published_at", "state = 'published'"),
		create("backlog_idx", "topic, id", backlogPredicate),
		create("dead_idx", "topic, id", "state = 'dead'"),
		create("dead_key_idx", "topic, partition_key, id", deadKeyPredicate),
	}
}

// relaysIndex creates the registry's index (see relaysDDL) on the table
// named on.
func (standardSQL) relaysIndex(t table, on string) string {
	return `CREATE INDEX IF NOT EXISTS ` + t.index("relays_alive_idx") + ` ON ` + on + ` (alive_until)`
}

// syncIndexes: the CREATE INDEX IF NOT EXISTS statements made the missing
// ones; the obsolete ones are dropped.
func (standardSQL) syncIndexes(ctx context.Context, t table, db queryer, _ func(string) (bool, error)) error {
	var drops []string
	for _, suffix := range obsoleteIndexes {
		drops = append(drops, `DROP INDEX IF EXISTS `+t.d.dropIndex(t, suffix))
	}
	return execAll(ctx, db, drops)
}

// force: the planner finds the partial index from the predicate.
func (standardSQL) force(table, string) string { return "" }

func (standardSQL) keyedTopics(t table) string {
	return `WITH RECURSIVE ` + topicWalk(t, "tp", keyedPredicate) + ` SELECT topic FROM tp WHERE topic IS NOT NULL`
}

func (standardSQL) keyAfter(t table, after keyPos) (string, []any) {
	return "(topic, partition_key) > (" + t.p(1) + ", " + t.p(2) + ")", []any{after.topic, after.key}
}

func (standardSQL) purgePublished(t table) string {
	return `DELETE FROM ` + t.quoted + ` WHERE id IN (SELECT id FROM ` + t.quoted +
		` WHERE state = 'published' AND published_at <= ` + t.minus(1) + ` ORDER BY published_at LIMIT ` + t.p(2) + `)`
}

func (standardSQL) statsTopics(t table) string {
	return `WITH RECURSIVE ` + topicWalk(t, "bt", backlogPredicate) + `, ` + topicWalk(t, "dt", "state = 'dead'") + `
SELECT topic FROM bt WHERE topic IS NOT NULL UNION SELECT topic FROM dt WHERE topic IS NOT NULL`
}

func (standardSQL) deadTopics(ctx context.Context, db queryer, t table) ([]string, error) {
	return queryColumn[string](ctx, db, `WITH RECURSIVE `+topicWalk(t, "dt", "state = 'dead'")+` SELECT topic FROM dt WHERE topic IS NOT NULL`)
}

func (standardSQL) keyGroup() string { return "topic, partition_key" }

func (standardSQL) behind(t table, sameKey func(alias, predicate string) string) string {
	return `(SELECT count(*) FROM (SELECT b.id` + sameKey("b", keyedPredicate) + ` ORDER BY b.id LIMIT ` + t.p(1) + ` + 1) b)`
}

// topicWalk is a recursive CTE, name(topic), that lists the distinct
// topics of the rows matching predicate in order, one index descent each
// (PostgreSQL and SQLite have no loose index scan); read it with
// "SELECT topic FROM name WHERE topic IS NOT NULL".
func topicWalk(t table, name, predicate string) string {
	return name + `(topic) AS (
  SELECT (SELECT topic FROM ` + t.quoted + ` WHERE ` + predicate + ` ORDER BY topic LIMIT 1)
  UNION ALL
  SELECT (SELECT o.topic FROM ` + t.quoted + ` o WHERE ` + prefixed("o.", predicate) + ` AND o.topic > ` + name + `.topic ORDER BY o.topic LIMIT 1)
  FROM ` + name + ` WHERE ` + name + `.topic IS NOT NULL
)`
}

// scalarBinds is embedded by mysqlDialect and sqliteDialect.
type scalarBinds struct{}

func (scalarBinds) placeholder(int) string { return "?" }

func (scalarBinds) idList(n int, ids []int64) (string, []any) {
	var b strings.Builder
	args := make([]any, len(ids))
	b.WriteString("id IN (")
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('?')
		args[i] = id
	}
	b.WriteByte(')')
	return b.String(), args
}

// runs: no LATERAL on MariaDB or SQLite, so one part per key.
func (scalarBinds) runs(q claimSQL, heads []keyHead, n int) (string, []any) {
	parts := make([]string, len(heads))
	args := make([]any, 0, 4*len(heads))
	for i, h := range heads {
		parts[i] = `SELECT * FROM (SELECT topic, partition_key, id, ` + q.free("") + ` AS free FROM ` + q.t.quoted + ` WHERE ` + keyedPredicate +
			` AND topic = ? AND partition_key = ? AND id >= ? ORDER BY id LIMIT ?) r` + strconv.Itoa(i)
		args = append(args, h.topic, h.key, h.id, n)
	}
	return strings.Join(parts, "\nUNION ALL\n"), args
}

// maxChainKeys: a statement part per key (runs).
func (scalarBinds) maxChainKeys() int { return maxChainKeys }

// claimFree: the claim locks its candidates in id order first (lockFree).
func (scalarBinds) claimFree(claimSQL, string, time.Duration, []int64) (string, []any, bool) {
	return "", nil, false
}

func (scalarBinds) pipelined() bool               { return false }
func (scalarBinds) vacuum(table) (string, string) { return "", "" }
func (scalarBinds) notify(string) string          { return "" }

// blockedHeads: one part per key.
func (scalarBinds) blockedHeads(t table, keys []keyPos, strict bool) (string, []any) {
	var args []any
	first := func(predicate string, k keyPos) string {
		args = append(args, k.topic, k.key)
		return `COALESCE((SELECT min(id) FROM ` + t.quoted + ` WHERE ` + predicate + ` AND topic = ? AND partition_key = ?), 0)`
	}
	parts := make([]string, len(keys))
	for i, k := range keys {
		waiting := first(waitingKeyPredicate, k)
		dead := "0"
		if strict {
			dead = first(deadKeyPredicate, k)
		}
		parts[i] = `SELECT ` + strconv.Itoa(i) + `, ` + waiting + `, ` + dead + `, ` + first(keyedPredicate, k)
	}
	return strings.Join(parts, "\nUNION ALL\n"), args
}
