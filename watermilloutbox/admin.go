package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// DeadRow is a row the relay gave up on.
type DeadRow struct {
	relaystore.Row
	LastError string
}

// DeadQuery pages through dead rows.
type DeadQuery struct {
	// Topic limits the list to one destination topic; "" lists all.
	Topic string
	// IDs limits the list to these rows (those of them that are dead);
	// nil lists all. At most 10,000 ids, each positive.
	IDs []int64
	// AfterID is the cursor: only rows with a larger id are listed. Pass
	// the last ID of the previous page; zero starts at the beginning.
	AfterID int64
	// Limit is the page size, in rows. Default 100; zero means the
	// default. At most 10,000.
	Limit int
}

func (q *DeadQuery) setDefaults() {
	if q.Limit == 0 {
		q.Limit = 100
	}
}

// Validate reports a bad field, by name.
func (q DeadQuery) Validate() error {
	var errs []error
	if q.Topic != "" {
		if err := ValidateTopic(q.Topic); err != nil {
			errs = append(errs, fmt.Errorf("Topic: %w", err))
		}
	}
	if len(q.IDs) > config.MaxBatchSize {
		errs = append(errs, fmt.Errorf("IDs: at most %d ids, got %d", config.MaxBatchSize, len(q.IDs)))
	}
	if err := checkIDs(q.IDs); err != nil {
		errs = append(errs, fmt.Errorf("IDs: %w", err))
	}
	if q.AfterID < 0 {
		errs = append(errs, fmt.Errorf("AfterID: must not be negative, got %d", q.AfterID))
	}
	if q.Limit < 1 || q.Limit > config.MaxBatchSize {
		errs = append(errs, fmt.Errorf("Limit: must be between 1 and %d, got %d", config.MaxBatchSize, q.Limit))
	}
	return errors.Join(errs...)
}

// ListDead returns one page of dead rows, in id order (oldest first), for
// inspection. With a Topic it reads that topic's dead rows through the dead
// rows' index (dead_idx; backlog_idx on MySQL), never the rest of the table.
func (s *SQLStore) ListDead(ctx context.Context, q DeadQuery) ([]DeadRow, error) {
	q.setDefaults()
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("outbox: list dead: %w", err)
	}
	if err := s.checkDialect(ctx); err != nil {
		return nil, fmt.Errorf("outbox: list dead: %w", err)
	}
	p := s.t.p
	where := `state = 'dead' AND id > ` + p(1)
	args := []any{q.AfterID}
	if q.Topic != "" {
		args = append(args, q.Topic)
		where += ` AND topic = ` + p(len(args))
	}
	if q.IDs != nil {
		in, idArgs := s.t.idList(len(args)+1, q.IDs)
		if len(q.IDs) == 0 {
			in, idArgs = "1 = 0", nil
		}
		where += ` AND ` + in
		args = append(args, idArgs...)
	}
	args = append(args, q.Limit)
	query := `SELECT ` + s.t.rowColumns("") + `, last_error FROM ` + s.t.quoted +
		` WHERE ` + where + ` ORDER BY id LIMIT ` + p(len(args))
	var out []DeadRow
	// An undecodable row is listed with what could be read: its last error
	// says why it is dead.
	err := s.scanRows(ctx, s.db, query, args, withLastError, func(r relaystore.Row, lastErr sql.NullString, _ error) {
		out = append(out, DeadRow{Row: r, LastError: lastErr.String})
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: list dead: %w", err)
	}
	return out, nil
}

// CountDead counts the dead rows of topic, or of every topic when topic is
// "", through the dead rows' index.
func (s *SQLStore) CountDead(ctx context.Context, topic string) (int, error) {
	if topic != "" {
		if err := ValidateTopic(topic); err != nil {
			return 0, fmt.Errorf("outbox: count dead: %w", err)
		}
	}
	if err := s.checkDialect(ctx); err != nil {
		return 0, fmt.Errorf("outbox: count dead: %w", err)
	}
	q, args := `SELECT count(*) FROM `+s.t.quoted+` WHERE state = 'dead'`, []any(nil)
	if topic != "" {
		q, args = q+` AND topic = `+s.t.p(1), []any{topic}
	}
	var n int
	if err := s.db.queryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("outbox: count dead: %w", err)
	}
	return n, nil
}

// Requeue makes dead rows pending and due again with a fresh retry
// budget; last_error is kept until the next failure. It returns how many
// rows it requeued (rows that are not dead are left alone). Ids must be
// positive; many ids are written DeadBatchSize at a time.
func (s *SQLStore) Requeue(ctx context.Context, ids ...int64) (int, error) {
	if err := checkIDs(ids); err != nil {
		return 0, fmt.Errorf("outbox: requeue: %w", err)
	}
	return s.byIDs(ctx, "requeue", ids, s.requeueIDs)
}

// PurgeDead deletes dead rows for good, returning how many it deleted.
// Ids must be positive; many ids are deleted DeadBatchSize at a time.
func (s *SQLStore) PurgeDead(ctx context.Context, ids ...int64) (int, error) {
	if err := checkIDs(ids); err != nil {
		return 0, fmt.Errorf("outbox: purge dead: %w", err)
	}
	return s.byIDs(ctx, "purge dead", ids, s.purgeIDs)
}

// RequeueTopic requeues, as Requeue does, every dead row of topic, in
// batches of DeadBatchSize rows, oldest first. It returns how many rows it
// requeued; on an error, those of the batches before it stay requeued.
func (s *SQLStore) RequeueTopic(ctx context.Context, topic string) (int, error) {
	if err := ValidateTopic(topic); err != nil {
		return 0, fmt.Errorf("outbox: requeue topic: %w", err)
	}
	return s.byTopics(ctx, "requeue topic", []string{topic}, s.requeueIDs)
}

// RequeueAll requeues every dead row of every topic, topic by topic in
// batches of DeadBatchSize rows (see RequeueTopic).
func (s *SQLStore) RequeueAll(ctx context.Context) (int, error) {
	return s.allTopics(ctx, "requeue all", s.requeueIDs)
}

// PurgeDeadTopic deletes every dead row of topic, in batches of
// DeadBatchSize rows, oldest first. It returns how many it deleted; on an
// error, those of the batches before it stay deleted.
func (s *SQLStore) PurgeDeadTopic(ctx context.Context, topic string) (int, error) {
	if err := ValidateTopic(topic); err != nil {
		return 0, fmt.Errorf("outbox: purge dead topic: %w", err)
	}
	return s.byTopics(ctx, "purge dead topic", []string{topic}, s.purgeIDs)
}

// PurgeAllDead deletes every dead row of every topic, topic by topic in
// batches of DeadBatchSize rows (see PurgeDeadTopic).
func (s *SQLStore) PurgeAllDead(ctx context.Context) (int, error) {
	return s.allTopics(ctx, "purge all dead", s.purgeIDs)
}

// batchWrite changes the dead rows among ids (at most DeadBatchSize) in one
// statement and returns how many it changed.
type batchWrite func(ctx context.Context, op string, ids []int64) (int, error)

// requeueIDs resets waiting too: a requeued row is due now, so it belongs
// in the claim's indexes again, not in those of rows backing off.
func (s *SQLStore) requeueIDs(ctx context.Context, op string, ids []int64) (int, error) {
	in, args := s.t.idList(1, ids)
	return s.exec(ctx, op, `UPDATE `+s.t.quoted+` SET state = 'pending', attempts = 0, available_at = `+s.t.now()+
		`, waiting = 0, claim_token = NULL, claimed_until = NULL WHERE state = 'dead' AND `+in, args...)
}

func (s *SQLStore) purgeIDs(ctx context.Context, op string, ids []int64) (int, error) {
	in, args := s.t.idList(1, ids)
	return s.exec(ctx, op, `DELETE FROM `+s.t.quoted+` WHERE state = 'dead' AND `+in, args...)
}

// byIDs applies write to ids, DeadBatchSize at a time.
func (s *SQLStore) byIDs(ctx context.Context, op string, ids []int64, write batchWrite) (int, error) {
	total := 0
	for chunk := range slices.Chunk(ids, DeadBatchSize) {
		n, err := write(ctx, op, chunk)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// allTopics applies write to the dead rows of every topic that has any.
func (s *SQLStore) allTopics(ctx context.Context, op string, write batchWrite) (int, error) {
	if err := s.checkDialect(ctx); err != nil {
		return 0, fmt.Errorf("outbox: %s: %w", op, err)
	}
	topics, err := s.deadTopics(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox: %s: topics: %w", op, err)
	}
	return s.byTopics(ctx, op, topics, write)
}

// byTopics walks each topic's dead rows in id order, DeadBatchSize ids at
// a time, through the index that holds them by (topic, id), and applies
// write to each batch. The id cursor keeps every read a short range scan,
// whatever the earlier batches left behind in the index (old row versions
// on PostgreSQL, delete-marked entries on InnoDB).
func (s *SQLStore) byTopics(ctx context.Context, op string, topics []string, write batchWrite) (int, error) {
	if err := s.checkDialect(ctx); err != nil {
		return 0, fmt.Errorf("outbox: %s: %w", op, err)
	}
	p := s.t.p
	q := `SELECT id FROM ` + s.t.quoted + ` WHERE state = 'dead' AND topic = ` + p(1) + ` AND id > ` + p(2) +
		` ORDER BY id LIMIT ` + p(3)
	total := 0
	for _, topic := range topics {
		for after := int64(0); ; {
			ids, err := queryColumn[int64](ctx, s.db, q, topic, after, DeadBatchSize)
			if err != nil {
				return total, fmt.Errorf("outbox: %s: %w", op, err)
			}
			if len(ids) == 0 {
				break
			}
			n, err := write(ctx, op, ids)
			total += n
			if err != nil {
				return total, err
			}
			if len(ids) < DeadBatchSize {
				break
			}
			after = ids[len(ids)-1]
		}
	}
	return total, nil
}

// deadTopics lists the topics with dead rows, in order: one index descent
// per topic (dead_idx; a loose scan of backlog_idx on MySQL).
func (s *SQLStore) deadTopics(ctx context.Context) ([]string, error) {
	return s.t.d.deadTopics(ctx, s.db, s.t)
}

// checkIDs refuses ids no row can have: ids start at 1.
func checkIDs(ids []int64) error {
	for _, id := range ids {
		if id < 1 {
			return fmt.Errorf("invalid id %d: ids are positive", id)
		}
	}
	return nil
}
