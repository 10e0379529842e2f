package watermilloutbox

import (
	"strconv"
	"strings"
	"time"
)

// claimSQL builds the statements of a claim (claim.go) in the table's
// dialect. Every statement that reads candidates repeats the predicate of
// the partial index it means to walk (see table.ddl). relay is the
// claiming relay (ClaimRequest.Relay, validated), "" for none.
type claimSQL struct {
	t     table
	relay string
}

func (q claimSQL) p(n int) string { return q.t.dialect.placeholder(n) }

// free is the condition of a row a claim may take: due, and not leased or
// leased to a relay whose heartbeat expired (relays.go). It is never NULL.
func (q claimSQL) free(alias string) string {
	now := q.t.now()
	return alias + "available_at <= " + now + " AND (" + alias + "claimed_until IS NULL OR " + alias + "claimed_until < " + now +
		" OR " + q.t.heldByDead(alias, q.relay) + ")"
}

// takenFrom says, for a row being claimed, whose claim it held: NULL for
// none, the relay's id for a relay declared dead whose lease had not ended
// (a takeover), "" for a lease that had ended.
func (q claimSQL) takenFrom(alias string) string {
	return "CASE WHEN " + alias + "claim_token IS NULL THEN NULL WHEN " + alias + "claimed_until >= " + q.t.now() + " AND " +
		q.t.heldByDead(alias, q.relay) + " THEN " + alias + "claimed_by ELSE '' END"
}

// holder is the claimed_by value a claim writes.
func (q claimSQL) holder() any {
	if q.relay == "" {
		return nil
	}
	return q.relay
}

// promote turns waiting rows whose delay has passed into plain pending rows
// again, at most limit of them (the oldest due first). On PostgreSQL the
// same statement sets the claim's plan settings, local to its transaction:
// a queue table's statistics are nearly always stale (a backlog appears
// and drains between two autovacuum runs), and with an estimate of a few
// pending rows the planner prefers a bitmap scan of every candidate and a
// sort to an index walk that stops at the limit (measured: 200 ms instead of
// 4 ms per claim on a fresh 20,000-row backlog).
func (q claimSQL) promote(limit int) (string, []any) {
	t := q.t
	due := waitingPredicate + " AND available_at <= " + t.now()
	switch t.dialect {
	case PostgreSQL:
		return `WITH p AS (UPDATE ` + t.quoted + ` SET waiting = 0 WHERE id IN (SELECT id FROM ` + t.quoted + ` WHERE ` + due +
			` ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING 1)
SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), (SELECT count(*) FROM p)`, []any{limit}
	case MySQL:
		return `UPDATE ` + t.quoted + ` SET waiting = 0 WHERE ` + due + ` ORDER BY available_at LIMIT ?`, []any{limit}
	default:
		return `UPDATE ` + t.quoted + ` SET waiting = 0 WHERE id IN (SELECT id FROM ` + t.quoted + ` WHERE ` + due +
			` ORDER BY available_at LIMIT ?)`, []any{limit}
	}
}

// keyless selects the ids of up to limit free keyless rows, oldest first.
func (q claimSQL) keyless(topics TopicFilter, limit int) (string, []any) {
	cond, args := topics.sql(q.t.dialect, "topic", 1)
	if cond != "" {
		cond = " AND " + cond
	}
	args = append(args, limit)
	return `SELECT id FROM ` + q.t.quoted + q.force("unkeyed_idx") + ` WHERE ` + unkeyedPredicate + ` AND ` + q.free("") + cond +
		` ORDER BY id LIMIT ` + q.p(len(args)), args
}

// force names the index MySQL must read: for ORDER BY id … LIMIT it
// would rather walk the primary key, and so every row of the table.
func (q claimSQL) force(suffix string) string {
	if q.t.dialect != MySQL {
		return ""
	}
	return " FORCE INDEX (" + q.t.index(suffix) + ")"
}

// keyedTopics lists the topics with non-waiting pending keyed rows, one
// index descent per topic.
func (q claimSQL) keyedTopics() string {
	t := q.t
	if t.dialect == MySQL {
		// A loose index scan: one descent per group. It allows equalities
		// only on the other index columns, so topics of keyless rows are
		// listed too; the walk finds no keys in them.
		return `SELECT topic FROM ` + t.quoted + q.force("keyed_idx") + ` WHERE state = 'pending' AND waiting = 0` +
			` GROUP BY state, waiting, topic ORDER BY state, waiting, topic`
	}
	return `WITH RECURSIVE ` + t.topicWalk("tp", keyedPredicate) + ` SELECT topic FROM tp WHERE topic IS NOT NULL`
}

// walk visits up to n keys after 'after' in key order (within topic when
// it is set), returning for each its topic, key, head id, whether the head
// is free, the key's first waiting row (0 when none) and, when strict, its
// first dead row (0 when none, or not strict).
func (q claimSQL) walk(topic *string, after keyPos, n int, strict bool) (string, []any) {
	t := q.t
	dead := "0"
	if strict {
		dead = `COALESCE((SELECT min(d.id) FROM ` + t.quoted + ` d WHERE ` + prefixed("d.", deadKeyPredicate) +
			` AND d.topic = h.topic AND d.partition_key = h.partition_key), 0)`
	}
	heads := func(from string) string {
		return `SELECT h.topic, h.partition_key, h.id, ` + q.free("h.") + `, COALESCE((SELECT min(w.id) FROM ` + t.quoted + ` w WHERE ` +
			prefixed("w.", waitingKeyPredicate) + ` AND w.topic = h.topic AND w.partition_key = h.partition_key), 0), ` + dead + `
FROM ` + from
	}
	switch t.dialect {
	case PostgreSQL:
		// One recursion step per key: each finds the next key's first row
		// with a single descent of keyed_idx.
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
` + heads(t.quoted+` h JOIN k ON h.id = k.id`) + ` ORDER BY k.n`, args
	case MySQL:
		// A loose index scan of keyed_idx: one descent per key.
		args := []any{after.topic, after.topic, after.key}
		only := ""
		if topic != nil {
			only = " AND topic = ?"
			args = append(args, *topic)
		}
		args = append(args, n)
		return heads(`(SELECT topic, partition_key, MIN(id) AS id FROM `+t.quoted+` WHERE `+keyedPredicate+
			` AND (topic > ? OR (topic = ? AND partition_key > ?))`+only+
			` GROUP BY state, waiting, topic, partition_key ORDER BY state, waiting, topic, partition_key LIMIT ?) k JOIN `+
			t.quoted+` h ON h.id = k.id`) + ` ORDER BY h.topic, h.partition_key`, args
	default:
		// SQLite uses a row value against correlated columns only for its
		// first column, so the next key is looked for in the same topic
		// first, then in the next topic.
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
		// A fixed topic is the cursor's topic (see SQLStore.round).
		self := t.quoted + ` c, ` + t.quoted + ` p WHERE c.id = k.id AND`
		return `WITH RECURSIVE k(id, n) AS (
  SELECT COALESCE(` + sameTopic(t.quoted+` p`, "?1", "?2") + `, ` + nextTopic(t.quoted+` p`, "?1") + `), 1
  UNION ALL
  SELECT COALESCE(` + sameTopic(self, "c.topic", "c.partition_key") + `, ` + nextTopic(self, "c.topic") + `), k.n + 1
  FROM k WHERE k.n < ?3 AND k.id IS NOT NULL
)
` + heads(t.quoted+` h JOIN k ON h.id = k.id`) + ` ORDER BY k.n`, []any{after.topic, after.key, n}
	}
}

// runs selects, for each head, up to n non-waiting pending rows of its key
// from the head on, in id order, each with whether it is free.
func (q claimSQL) runs(heads []keyHead, n int) (string, []any) {
	t := q.t
	if t.dialect == PostgreSQL {
		topics := make([]string, len(heads))
		keys := make([]string, len(heads))
		ids := make([]int64, len(heads))
		for i, h := range heads {
			topics[i], keys[i], ids[i] = h.topic, h.key, h.id
		}
		return `SELECT c.topic, c.partition_key, r.id, ` + q.free("r.") + `
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(topic, partition_key, head)
CROSS JOIN LATERAL (SELECT id, available_at, claimed_until, claimed_by FROM ` + t.quoted + ` WHERE ` + keyedPredicate +
			` AND topic = c.topic AND partition_key = c.partition_key AND id >= c.head ORDER BY id LIMIT $4) r`, []any{topics, keys, ids, n}
	}
	// No LATERAL on MariaDB or SQLite: one part per key.
	parts := make([]string, len(heads))
	args := make([]any, 0, 4*len(heads))
	for i, h := range heads {
		parts[i] = `SELECT * FROM (SELECT topic, partition_key, id, ` + q.free("") + ` AS free FROM ` + t.quoted + ` WHERE ` + keyedPredicate +
			` AND topic = ? AND partition_key = ? AND id >= ? ORDER BY id LIMIT ?) r` + strconv.Itoa(i)
		args = append(args, h.topic, h.key, h.id, n)
	}
	return strings.Join(parts, "\nUNION ALL\n"), args
}

// keyedRows selects, for an unordered claim, up to n free keyed rows after
// 'after' in key order (within topic when it is set): id, topic, key.
func (q claimSQL) keyedRows(topic *string, after keyPos, n int) (string, []any) {
	t := q.t
	var pos string
	var args []any
	switch t.dialect {
	case MySQL:
		pos = "(topic > ? OR (topic = ? AND partition_key > ?))"
		args = []any{after.topic, after.topic, after.key}
	default:
		pos = "(topic, partition_key) > (" + q.p(1) + ", " + q.p(2) + ")"
		args = []any{after.topic, after.key}
	}
	if topic != nil {
		args = append(args, *topic)
		pos += " AND topic = " + q.p(len(args))
	}
	args = append(args, n)
	return `SELECT id, topic, partition_key FROM ` + t.quoted + ` WHERE ` + keyedPredicate + ` AND ` + pos + ` AND ` + q.free("") +
		` ORDER BY topic, partition_key, id LIMIT ` + q.p(len(args)), args
}

// takeFree is the condition a candidate must still meet when it is locked.
func (q claimSQL) takeFree(alias string) string {
	return alias + "state = 'pending' AND " + alias + "waiting = 0 AND " + q.free(alias)
}

// claimFree claims the candidates that are still free, skipping rows
// another transaction holds, and returns them with whose claim each held
// (takenFrom; PostgreSQL).
func (q claimSQL) claimFree(s *SQLStore, token string, lease time.Duration, ids []int64) (string, []any) {
	return `UPDATE ` + q.t.quoted + ` t SET claim_token = $1, claimed_until = ` + s.plus(2) + `, claimed_by = $4` +
		` FROM (SELECT id, ` + q.takenFrom("") + ` AS taken_from FROM ` + q.t.quoted + ` WHERE id = ANY($3) AND ` + q.takeFree("") +
		` FOR UPDATE SKIP LOCKED) c WHERE t.id = c.id
RETURNING ` + s.rowColumns("t.") + `, c.taken_from`, []any{token, lease.Microseconds(), ids, q.holder()}
}

// lockFree locks the candidates that are still free by primary key, in id
// order, skipping rows another transaction holds, and returns them with
// whose claim each held (takenFrom; MySQL; SQLite, whose claim holds the
// write lock, reads them).
func (q claimSQL) lockFree(s *SQLStore, ids []int64) (string, []any) {
	in, args := s.idList(1, ids)
	lock := " FOR UPDATE SKIP LOCKED"
	if q.t.dialect == SQLite {
		lock = ""
	}
	return `SELECT ` + s.rowColumns("") + `, ` + q.takenFrom("") + ` FROM ` + q.t.quoted + ` WHERE ` + in + ` AND ` + q.takeFree("") +
		` ORDER BY id` + lock, args
}

// claimIDs claims rows locked by lockFree.
func (q claimSQL) claimIDs(s *SQLStore, token string, lease time.Duration, ids []int64) (string, []any) {
	in, args := s.idList(4, ids)
	return `UPDATE ` + q.t.quoted + ` SET claim_token = ` + q.p(1) + `, claimed_until = ` + s.plus(2) + `, claimed_by = ` + q.p(3) + ` WHERE ` + in,
		append([]any{token, lease.Microseconds(), q.holder()}, args...)
}

// unclaim gives back rows the claim took but the cut dropped.
func (q claimSQL) unclaim(s *SQLStore, token string, ids []int64) (string, []any) {
	in, args := s.idList(2, ids)
	return `UPDATE ` + q.t.quoted + ` SET claim_token = NULL, claimed_until = NULL WHERE claim_token = ` + q.p(1) + ` AND ` + in,
		append([]any{token}, args...)
}

// prefixed qualifies the columns of one of the index predicates with alias.
func prefixed(alias, predicate string) string {
	for _, col := range []string{"state", "waiting", "partition_key", "id"} {
		predicate = strings.ReplaceAll(predicate, col+" ", alias+col+" ")
	}
	return predicate
}
