package watermilloutbox

import (
	"context"
	"database/sql"
	"strings"
)

// SetClaimHook lets tests hold a claim transaction open just before it
// commits.
func SetClaimHook(s *SQLStore, hook func()) { s.claimHook = hook }

// ExplainPostgresClaim returns the plans of the statements a claim reads
// its candidates with (keyless rows, then keyed ones), after the claim's
// own preparation (or without it, to show what it prevents). The
// transaction is rolled back: nothing is claimed.
func ExplainPostgresClaim(ctx context.Context, s *SQLStore, req ClaimRequest, prepared bool) (string, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback() //nolint:errcheck // nothing to keep
	if prepared {
		q, args := s.q.promote(req.Limit)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return "", err
		}
	}
	var plans []string
	explain := func(q string, args []any) error {
		rows, err := tx.QueryContext(ctx, "EXPLAIN "+q, args...)
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
		q, args = s.q.walk(topic, keyPos{}, walkBudget(req.Limit))
	} else {
		q, args = s.q.keyedRows(topic, keyPos{}, req.Limit)
	}
	if err := explain(q, args); err != nil {
		return "", err
	}
	return strings.Join(plans, "\n"), nil
}
