package watermilloutbox

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// DeadRow is a row the relay gave up on.
type DeadRow struct {
	Row
	LastError string
}

// DeadQuery pages through dead rows.
type DeadQuery struct {
	// Topic limits the list to one destination topic; "" lists all.
	Topic string
	// AfterID is the cursor: only rows with a larger id are listed. Pass
	// the last ID of the previous page; zero starts at the beginning.
	AfterID int64
	// Limit is the page size, in rows. Default 100; zero means the
	// default. At most 10,000.
	Limit int
}

// ListDead returns one page of dead rows, in id order (oldest first), for
// inspection.
func (s *SQLStore) ListDead(ctx context.Context, q DeadQuery) ([]DeadRow, error) {
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit < 0 || q.Limit > config.MaxBatchSize {
		return nil, fmt.Errorf("outbox: list dead: limit must be between 1 and %d, got %d", config.MaxBatchSize, q.Limit)
	}
	p := s.t.dialect.placeholder
	where := `state = 'dead' AND id > ` + p(1)
	args := []any{q.AfterID}
	if q.Topic != "" {
		where += ` AND topic = ` + p(2)
		args = append(args, q.Topic)
	}
	args = append(args, q.Limit)
	query := `SELECT ` + s.rowColumns("") + `, last_error FROM ` + s.t.quoted +
		` WHERE ` + where + ` ORDER BY id LIMIT ` + p(len(args))
	var out []DeadRow
	err := s.scanRows(ctx, s.db, query, args, withLastError, func(r Row, lastErr sql.NullString) {
		out = append(out, DeadRow{Row: r, LastError: lastErr.String})
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: list dead: %w", err)
	}
	return out, nil
}

// Requeue makes dead rows pending and due again with a fresh retry
// budget; last_error is kept until the next failure. It returns how many
// rows it requeued (rows that are not dead are left alone).
func (s *SQLStore) Requeue(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	in, args := s.idList(1, ids)
	return s.exec(ctx, "requeue", `UPDATE `+s.t.quoted+` SET state = 'pending', attempts = 0, available_at = `+s.now()+
		`, waiting = 0, claim_token = NULL, claimed_until = NULL WHERE state = 'dead' AND `+in, args...)
}

// PurgeDead deletes dead rows for good, returning how many it deleted.
func (s *SQLStore) PurgeDead(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	in, args := s.idList(1, ids)
	return s.exec(ctx, "purge dead", `DELETE FROM `+s.t.quoted+` WHERE state = 'dead' AND `+in, args...)
}
