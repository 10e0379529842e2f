package watermilloutbox

import (
	"strings"
	"time"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// claimSQL builds the statements of a claim (claim.go), the parts that
// differ between databases by the table's dialect. Every statement that
// reads candidates repeats the predicate of the partial index it means to
// walk (see table.ddl). relay is the claiming relay (ClaimRequest.Relay,
// validated), "" for none.
type claimSQL struct {
	t     table
	relay string
}

func (q claimSQL) p(n int) string { return q.t.p(n) }

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

// duePredicate is the condition of a waiting row whose delay has passed.
func duePredicate(t table) string { return waitingPredicate + " AND available_at <= " + t.now() }

// promote turns waiting rows whose delay has passed into plain pending rows
// again, at most limit of them (the oldest due first).
func (q claimSQL) promote(limit int) (string, []any) { return q.t.d.promote(q.t, limit) }

// keyless selects the ids of up to limit free keyless rows, oldest first.
func (q claimSQL) keyless(topics relaystore.TopicFilter, limit int) (string, []any) {
	cond, args := topicsSQL(topics, q.t.d, "topic", 1)
	if cond != "" {
		cond = " AND " + cond
	}
	args = append(args, limit)
	return `SELECT id FROM ` + q.t.quoted + q.t.d.force(q.t, "unkeyed_idx") + ` WHERE ` + unkeyedPredicate + ` AND ` + q.free("") + cond +
		` ORDER BY id LIMIT ` + q.p(len(args)), args
}

// keyedTopics lists the topics with non-waiting pending keyed rows, one
// index descent per topic.
func (q claimSQL) keyedTopics() string { return q.t.d.keyedTopics(q.t) }

// walk visits up to n keys after 'after' in key order (within topic when
// it is set), returning for each its topic, key, head id, whether the head
// is free, the key's first waiting row (0 when none) and, when strict, its
// first dead row (0 when none, or not strict): the columns of heads.
func (q claimSQL) walk(topic *string, after keyPos, n int, strict bool) (string, []any) {
	return q.t.d.walk(q, topic, after, n, strict)
}

// heads selects, for the key heads h in from, what walk returns.
func (q claimSQL) heads(from string, strict bool) string {
	t := q.t
	dead := "0"
	if strict {
		dead = `COALESCE((SELECT min(d.id) FROM ` + t.quoted + ` d WHERE ` + prefixed("d.", deadKeyPredicate) +
			` AND d.topic = h.topic AND d.partition_key = h.partition_key), 0)`
	}
	return `SELECT h.topic, h.partition_key, h.id, ` + q.free("h.") + `, COALESCE((SELECT min(w.id) FROM ` + t.quoted + ` w WHERE ` +
		prefixed("w.", waitingKeyPredicate) + ` AND w.topic = h.topic AND w.partition_key = h.partition_key), 0), ` + dead + `
FROM ` + from
}

// runs selects, for each head, up to n non-waiting pending rows of its key
// from the head on, in id order, each with whether it is free.
func (q claimSQL) runs(heads []keyHead, n int) (string, []any) { return q.t.d.runs(q, heads, n) }

// keyedRows selects, for an unordered claim, up to n free keyed rows after
// 'after' in key order (within topic when it is set): id, topic, key.
func (q claimSQL) keyedRows(topic *string, after keyPos, n int) (string, []any) {
	pos, args := q.t.d.keyAfter(q.t, after)
	if topic != nil {
		args = append(args, *topic)
		pos += " AND topic = " + q.p(len(args))
	}
	args = append(args, n)
	return `SELECT id, topic, partition_key FROM ` + q.t.quoted + ` WHERE ` + keyedPredicate + ` AND ` + pos + ` AND ` + q.free("") +
		` ORDER BY topic, partition_key, id LIMIT ` + q.p(len(args)), args
}

// takeFree is the condition a candidate must still meet when it is locked.
func (q claimSQL) takeFree(alias string) string {
	return alias + "state = 'pending' AND " + alias + "waiting = 0 AND " + q.free(alias)
}

// claimFree claims the candidates that are still free in one statement
// and returns them with whose claim each held (takenFrom); ok is false
// where the dialect locks them first (lockFree, then claimIDs).
func (q claimSQL) claimFree(token string, lease time.Duration, ids []int64) (string, []any, bool) {
	return q.t.d.claimFree(q, token, lease, ids)
}

// lockFree locks the candidates that are still free by primary key, in id
// order, skipping rows another transaction holds (or, on SQLite, whose
// claim holds the write lock, reads them), and returns them with whose
// claim each held (takenFrom).
func (q claimSQL) lockFree(ids []int64) (string, []any) {
	in, args := q.t.idList(1, ids)
	return `SELECT ` + q.t.rowColumns("") + `, ` + q.takenFrom("") + ` FROM ` + q.t.quoted + ` WHERE ` + in + ` AND ` + q.takeFree("") +
		` ORDER BY id` + q.t.d.lockClause(), args
}

// claimIDs claims rows locked by lockFree.
func (q claimSQL) claimIDs(token string, lease time.Duration, ids []int64) (string, []any) {
	in, args := q.t.idList(4, ids)
	return `UPDATE ` + q.t.quoted + ` SET claim_token = ` + q.p(1) + `, claimed_until = ` + q.t.plus(2) + `, claimed_by = ` + q.p(3) + ` WHERE ` + in,
		append([]any{token, lease.Microseconds(), q.holder()}, args...)
}

// unclaim gives back rows the claim took but the cut dropped.
func (q claimSQL) unclaim(token string, ids []int64) (string, []any) {
	in, args := q.t.idList(2, ids)
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
