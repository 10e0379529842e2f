package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// BlockedKey is a partition key whose rows are held back: its head (its
// first row not yet delivered) is backing off after a failure, or, under
// StrictOrder, dead. Without StrictOrder a dead row does not hold its key,
// so only backing-off heads are listed.
type BlockedKey struct {
	Topic string
	Key   string
	// HeadID is the row holding the key back.
	HeadID int64
	// State is HeadWaiting or HeadDead.
	State string
	// Attempts counts the head's failed attempts; LastError is the last one.
	Attempts  int
	LastError string
	// HeadAge is how long ago the head was written (database clock): how
	// long the key has delivered nothing newer.
	HeadAge time.Duration
	// RetryIn is how long until a waiting head is retried; zero when it is
	// due or dead.
	RetryIn time.Duration
	// Behind counts the key's pending rows after the head, at most
	// BlockedBehindLimit; BehindCapped reports that there are more.
	Behind       int
	BehindCapped bool
	// BehindAge is the age of the oldest row behind the head: how long
	// the rows held back have waited. Zero when none is behind.
	BehindAge time.Duration
}

// BlockedQuery pages through the blocked keys, in (topic, key) order.
type BlockedQuery struct {
	// Topic limits the list to one destination topic; "" lists all.
	Topic string
	// AfterTopic and AfterKey are the cursor: only keys after this one are
	// listed. Pass the Topic and Key of the previous page's last entry;
	// both empty start at the beginning.
	AfterTopic, AfterKey string
	// Limit is the page size, in keys. Default 100; zero means the
	// default. At most MaxBlockedPage.
	Limit int
	// HeadsOnly leaves Behind, BehindCapped and BehindAge zero: the rows
	// behind each head are not read, so a page costs a few index descents
	// a key (what the metrics read). Default false.
	HeadsOnly bool
}

func (q *BlockedQuery) setDefaults() {
	if q.Limit == 0 {
		q.Limit = 100
	}
}

// Validate reports a bad field, by name.
func (q BlockedQuery) Validate() error {
	var errs []error
	if q.Topic != "" {
		if err := ValidateTopic(q.Topic); err != nil {
			errs = append(errs, fmt.Errorf("Topic: %w", err))
		}
	}
	if q.Limit < 1 || q.Limit > MaxBlockedPage {
		errs = append(errs, fmt.Errorf("Limit: must be between 1 and %d, got %d", MaxBlockedPage, q.Limit))
	}
	return errors.Join(errs...)
}

// blockedChunk is how many keys one statement of BlockedKeys looks at.
const blockedChunk = 50

// BlockedKeys returns one page of blocked keys, in (topic, key) order. Its
// cost is bounded by the page: the keys are found in the indexes of the
// waiting rows (waiting_key_idx) and, under StrictOrder, of the dead keyed
// rows (dead_key_idx; keyed_idx on MySQL), where a blocked key has about
// one row each; then each key's head is read by id and the rows behind it
// counted, at most BlockedBehindLimit, through keyed_idx.
func (s *SQLStore) BlockedKeys(ctx context.Context, q BlockedQuery) ([]BlockedKey, error) {
	q.setDefaults()
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: blocked keys: %w", err)
	}
	if err := s.checkDialect(ctx); err != nil {
		return nil, fmt.Errorf("outbox: blocked keys: %w", err)
	}
	var out []BlockedKey
	after := keyPos{topic: q.AfterTopic, key: q.AfterKey}
	// A candidate may turn out not blocked (an earlier row of its key is
	// in flight): read on until the page is full or the keys run out.
	for len(out) < q.Limit {
		want := q.Limit - len(out)
		keys, err := s.blockedCandidates(ctx, q.Topic, after, want)
		if err != nil {
			return nil, fmt.Errorf("outbox: blocked keys: %w", err)
		}
		for chunk := range slices.Chunk(keys, blockedChunk) {
			got, err := s.blockedHeads(ctx, chunk, q.HeadsOnly)
			if err != nil {
				return nil, fmt.Errorf("outbox: blocked keys: %w", err)
			}
			out = append(out, got...)
		}
		if len(keys) < want {
			break
		}
		after = keys[len(keys)-1]
	}
	return out, nil
}

// blockedCandidates lists up to n keys after 'after' with a waiting row
// or, under StrictOrder, a dead one, in the database's key order.
func (s *SQLStore) blockedCandidates(ctx context.Context, topic string, after keyPos, n int) ([]keyPos, error) {
	t := s.t
	var args []any
	p := func(v any) string {
		args = append(args, v)
		return t.p(len(args))
	}
	part := func(predicate string) string {
		where := predicate + ` AND (topic > ` + p(after.topic) + ` OR (topic = ` + p(after.topic) + ` AND partition_key > ` + p(after.key) + `))`
		if topic != "" {
			where += ` AND topic = ` + p(topic)
		}
		group := t.d.keyGroup()
		return `SELECT topic, partition_key FROM ` + t.quoted + t.d.force(t, "keyed_idx") + ` WHERE ` + where +
			` GROUP BY ` + group + ` ORDER BY ` + group + ` LIMIT ` + p(n)
	}
	var q string
	if !s.config.StrictOrder {
		q = `SELECT topic, partition_key FROM (` + part(waitingKeyPredicate) + `) w`
	} else {
		// Each part in a derived table of its own: SQLite allows no
		// ORDER BY or LIMIT on the parts of a compound SELECT.
		q = `SELECT DISTINCT topic, partition_key FROM (SELECT * FROM (` + part(waitingKeyPredicate) + `) w UNION ALL SELECT * FROM (` +
			part(deadKeyPredicate) + `) d) u`
	}
	q += ` ORDER BY topic, partition_key LIMIT ` + p(n)
	rs, err := s.db.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []keyPos
	for rs.Next() {
		var k keyPos
		if err := rs.Scan(&k.topic, &k.key); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rs.Err()
}

// blockedHeads reads, for each key, its first waiting row, its first dead
// row (under StrictOrder) and its first other pending row, picks the head,
// and returns the keys whose head holds them back, with the head's details
// and the rows behind it.
func (s *SQLStore) blockedHeads(ctx context.Context, keys []keyPos, headsOnly bool) ([]BlockedKey, error) {
	t := s.t
	q, args := t.d.blockedHeads(t, keys, s.config.StrictOrder)
	rs, err := s.db.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	type head struct {
		keyPos
		id int64
	}
	var heads []head
	for rs.Next() {
		var h keyHead
		var i int
		var next int64
		if err := rs.Scan(&i, &h.wait, &h.dead, &next); err != nil {
			rs.Close()
			return nil, err
		}
		h.keyPos = keys[i]
		if b := h.blocker(); b != 0 && (next == 0 || b < next) {
			heads = append(heads, head{h.keyPos, b})
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, err
	}
	if len(heads) == 0 {
		return nil, nil
	}
	ids := make([]int64, len(heads))
	for i, h := range heads {
		ids[i] = h.id
	}
	in, args := t.idList(2, ids)
	q = s.headsQuery("h.", headsOnly) + ` WHERE ` + prefixed("h.", in)
	rs, err = s.db.query(ctx, q, append([]any{BlockedBehindLimit - 1}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	byID := make(map[int64]BlockedKey, len(heads))
	for rs.Next() {
		var b BlockedKey
		var lastErr sql.NullString
		var age, due int64
		var behindAge *int64
		var keyed, waiting int
		if err := rs.Scan(&b.HeadID, &b.State, &b.Attempts, &lastErr, &age, &due, &keyed, &waiting, &behindAge); err != nil {
			return nil, err
		}
		b.LastError = lastErr.String
		b.HeadAge = max(time.Duration(age)*time.Microsecond, 0)
		if b.State == "pending" {
			b.State = HeadWaiting
			b.RetryIn = max(time.Duration(due)*time.Microsecond, 0)
		}
		b.Behind = min(keyed+waiting, BlockedBehindLimit)
		b.BehindCapped = keyed+waiting >= BlockedBehindLimit
		if behindAge != nil {
			b.BehindAge = max(time.Duration(*behindAge)*time.Microsecond, 0)
		}
		byID[b.HeadID] = b
	}
	if err := rs.Err(); err != nil {
		return nil, err
	}
	out := make([]BlockedKey, 0, len(heads))
	for _, h := range heads {
		b, ok := byID[h.id]
		if !ok {
			continue // delivered or requeued meanwhile
		}
		b.Topic, b.Key = h.topic, h.key
		out = append(out, b)
	}
	return out, nil
}

// headsQuery selects, for the heads h (its alias), each head's id, state,
// attempts, last error, age, time until due, the rows behind it (keyed
// ones counted up to BlockedBehindLimit, waiting ones) and the age of the
// first row behind it. Placeholder 1 is BlockedBehindLimit - 1. The rows
// behind are read through a LIMIT; on MariaDB, which allows no reference
// to h in a derived table, counted up to the id of the
// BlockedBehindLimit-th of them (found with OFFSET), which reads them twice.
func (s *SQLStore) headsQuery(h string, headsOnly bool) string {
	t := s.t
	now := t.nowMicros()
	sameKey := func(alias, predicate string) string {
		return ` FROM ` + t.quoted + ` ` + alias + ` WHERE ` + prefixed(alias+".", predicate) + ` AND ` + alias + `.topic = ` + h + `topic AND ` +
			alias + `.partition_key = ` + h + `partition_key AND ` + alias + `.id > ` + h + `id`
	}
	behind := t.d.behind(t, sameKey)
	waiting := `(SELECT count(*)` + sameKey("w", waitingKeyPredicate) + `)`
	oldest := `(SELECT ` + now + ` - ` + t.epochMicros("o.created_at") + sameKey("o", keyedPredicate) + ` ORDER BY o.id LIMIT 1)`
	if headsOnly {
		// The placeholder stays in use, so the arguments are the same.
		behind, waiting, oldest = t.p(1)+` * 0`, "0", "NULL"
	}
	return `SELECT ` + h + `id, ` + h + `state, ` + h + `attempts, ` + h + `last_error, ` + now + ` - ` + t.epochMicros(h+"created_at") + `, ` +
		t.epochMicros(h+"available_at") + ` - ` + now + `,
  ` + behind + `, ` + waiting + `, ` + oldest + `
FROM ` + t.quoted + ` ` + strings.TrimSuffix(h, ".")
}

// KeyAction says what RequeueKey or SkipKey did.
type KeyAction struct {
	// HeadID is the row acted on; State what it was (HeadWaiting or
	// HeadDead).
	HeadID int64
	State  string
}

// RequeueKey retries the head holding a key back: a dead head becomes
// pending with a fresh retry budget (as Requeue), a waiting one becomes due
// now, keeping its attempts (and is no longer listed as blocked). The head keeps its id, so it is still the
// key's first row and the key's order holds: it goes first, the rows
// behind it after. ErrNotBlocked when nothing holds the key.
func (s *SQLStore) RequeueKey(ctx context.Context, topic, key string) (KeyAction, error) {
	return s.keyAction(ctx, "requeue key", topic, key, func(ctx context.Context, b BlockedKey) (int, error) {
		if b.State == HeadDead {
			return s.requeueIDs(ctx, "requeue key", []int64{b.HeadID})
		}
		return s.exec(ctx, "requeue key", `UPDATE `+s.t.quoted+` SET available_at = `+s.t.now()+`, waiting = 0 WHERE `+
			waitingPredicate+` AND id = `+s.t.p(1), b.HeadID)
	})
}

// SkipKey gives up on the head holding a key back, so the rows behind it
// go on: the head row is deleted for good (read it first with ListDead or
// BlockedKeys if it must be kept elsewhere). ErrNotBlocked when nothing
// holds the key.
func (s *SQLStore) SkipKey(ctx context.Context, topic, key string) (KeyAction, error) {
	return s.keyAction(ctx, "skip key", topic, key, func(ctx context.Context, b BlockedKey) (int, error) {
		pred := waitingPredicate
		if b.State == HeadDead {
			pred = "state = 'dead'"
		}
		return s.exec(ctx, "skip key", `DELETE FROM `+s.t.quoted+` WHERE `+pred+` AND id = `+s.t.p(1), b.HeadID)
	})
}

// BlockedKey returns the head holding one key back, as BlockedKeys lists
// it; ErrNotBlocked when nothing holds the key.
func (s *SQLStore) BlockedKey(ctx context.Context, topic, key string) (BlockedKey, error) {
	return s.keyHead(ctx, "blocked key", topic, key)
}

func (s *SQLStore) keyHead(ctx context.Context, op, topic, key string) (BlockedKey, error) {
	if err := ValidateTopic(topic); err != nil {
		return BlockedKey{}, fmt.Errorf("outbox: %s: %w", op, err)
	}
	if key == "" || len(key) > maxTopicLen {
		return BlockedKey{}, fmt.Errorf("outbox: %s: key must be 1 to %d bytes, got %d", op, maxTopicLen, len(key))
	}
	if err := s.checkDialect(ctx); err != nil {
		return BlockedKey{}, fmt.Errorf("outbox: %s: %w", op, err)
	}
	got, err := s.blockedHeads(ctx, []keyPos{{topic: topic, key: key}}, false)
	if err != nil {
		return BlockedKey{}, fmt.Errorf("outbox: %s: %w", op, err)
	}
	if len(got) == 0 {
		return BlockedKey{}, fmt.Errorf("%w: topic %q key %q", ErrNotBlocked, topic, key)
	}
	return got[0], nil
}

// keyAction finds the key's head and applies write to it. A head that a
// relay changed meanwhile (retried, delivered) is left alone: write then
// changes nothing and ErrNotBlocked is returned.
func (s *SQLStore) keyAction(ctx context.Context, op, topic, key string, write func(context.Context, BlockedKey) (int, error)) (KeyAction, error) {
	head, err := s.keyHead(ctx, op, topic, key)
	if err != nil {
		return KeyAction{}, err
	}
	n, err := write(ctx, head)
	if err != nil {
		return KeyAction{}, err
	}
	if n == 0 {
		return KeyAction{}, fmt.Errorf("%w: topic %q key %q: its head %d changed meanwhile", ErrNotBlocked, topic, key, head.HeadID)
	}
	return KeyAction{HeadID: head.HeadID, State: head.State}, nil
}
