package watermilloutbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// SetClaimHook lets tests hold a claim transaction open just before it
// commits.
func SetClaimHook(s *SQLStore, hook func()) { s.claimHook = hook }

// SetTakeHook lets tests fail PostgreSQL's pipelined claim after its take
// committed, as a failed unclaim would.
func SetTakeHook(s *SQLStore, hook func() error) { s.takeHook = hook }

// SetClaimTripsHook lets tests count the round trips of PostgreSQL's
// pipelined claim.
func SetClaimTripsHook(s *SQLStore, hook func(trips int)) { s.tripsHook = hook }

// ExplainPostgresClaim returns the plans of the statements a claim reads
// its candidates with (keyless rows, then keyed ones), after the claim's
// own preparation (or without it, to show what it prevents). The
// transaction is rolled back: nothing is claimed.
func ExplainPostgresClaim(ctx context.Context, s *SQLStore, req relaystore.ClaimRequest, prepared bool) (string, error) {
	tx, err := s.db.begin(ctx, false)
	if err != nil {
		return "", err
	}
	defer tx.rollback(ctx) //nolint:errcheck // nothing to keep
	if prepared {
		q, args := s.q.promote(req.Limit)
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return "", err
		}
	}
	var plans []string
	explain := func(q string, args []any) error {
		rows, err := tx.query(ctx, "EXPLAIN "+q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var line sql.NullString
			if err := rows.Scan(&line); err != nil {
				return err
			}
			plans = append(plans, line.String)
		}
		return rows.Err()
	}
	q, args := s.q.keyless(req.Topics, req.Limit)
	if err := explain(q, args); err != nil {
		return "", err
	}
	var topic *string
	if len(req.Topics.Names) == 1 {
		topic = &req.Topics.Names[0]
	}
	if req.Ordered {
		q, args = s.q.walk(topic, keyPos{}, walkBudget(req.Limit), req.StrictOrder)
	} else {
		q, args = s.q.keyedRows(topic, keyPos{}, req.Limit)
	}
	if err := explain(q, args); err != nil {
		return "", err
	}
	return strings.Join(plans, "\n"), nil
}

// ClaimReadCost runs the statements an ordered (or unordered) claim reads
// its candidates with — keyless rows, then the walk over the keys (or the
// keyed rows) — in a transaction it rolls back, and returns what they
// read: on PostgreSQL the buffers they touched (EXPLAIN ANALYZE, BUFFERS),
// on MySQL the handler reads (SHOW SESSION STATUS). A claim bounded by its
// work reads about as much with a long tail behind a stuck key as with a
// short one.
func ClaimReadCost(ctx context.Context, s *SQLStore, req relaystore.ClaimRequest) (int64, error) {
	tx, err := s.db.begin(ctx, false)
	if err != nil {
		return 0, err
	}
	defer tx.rollback(ctx) //nolint:errcheck // nothing to keep
	q, args := s.q.promote(req.Limit)
	if _, err := tx.exec(ctx, q, args...); err != nil {
		return 0, err
	}
	stmts := [][2]any{}
	q, args = s.q.keyless(req.Topics, req.Limit)
	stmts = append(stmts, [2]any{q, args})
	if req.Ordered {
		q, args = s.q.walk(nil, keyPos{}, walkBudget(req.Limit), req.StrictOrder)
	} else {
		q, args = s.q.keyedRows(nil, keyPos{}, req.Limit)
	}
	stmts = append(stmts, [2]any{q, args})
	var total int64
	switch s.Dialect() {
	case PostgreSQL:
		for _, st := range stmts {
			var plan []byte
			if err := tx.queryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+st[0].(string), st[1].([]any)...).Scan(&plan); err != nil {
				return 0, err
			}
			var out []struct {
				Plan struct {
					Hit  int64 `json:"Shared Hit Blocks"`
					Read int64 `json:"Shared Read Blocks"`
				}
			}
			if err := json.Unmarshal(plan, &out); err != nil {
				return 0, err
			}
			total += out[0].Plan.Hit + out[0].Plan.Read
		}
	case MySQL:
		reads := func() (int64, error) {
			rs, err := tx.query(ctx, "SHOW SESSION STATUS LIKE 'Handler_read%'")
			if err != nil {
				return 0, err
			}
			defer rs.Close()
			var sum int64
			for rs.Next() {
				var name string
				var v int64
				if err := rs.Scan(&name, &v); err != nil {
					return 0, err
				}
				sum += v
			}
			return sum, rs.Err()
		}
		before, err := reads()
		if err != nil {
			return 0, err
		}
		for _, st := range stmts {
			rs, err := tx.query(ctx, st[0].(string), st[1].([]any)...)
			if err != nil {
				return 0, err
			}
			for rs.Next() {
			}
			rs.Close()
		}
		after, err := reads()
		if err != nil {
			return 0, err
		}
		total = after - before
	default:
		return 0, errors.New("no read counters on SQLite")
	}
	return total, nil
}

// StatementsUnnamed reports whether the store's statements avoid named
// prepared statements (stmtMode).
func StatementsUnnamed(s *SQLStore) bool { return s.mode.unnamed() }

// TreatAsPooled makes the store run its statements as behind a
// transaction pooler (unnamed, the claim's prepared with SQL PREPARE) on
// whatever connection it has: a test then knows which server connection
// holds what.
func TreatAsPooled(s *SQLStore) {
	s.probe.pooler.Store(true) // the pooler check ran
	s.mode.direct.Store(false)
}
