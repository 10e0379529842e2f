package watermilloutbox

import (
	"context"
	"database/sql"
	"strings"
)

// SetClaimHook lets tests hold a MySQL claim transaction open.
func SetClaimHook(s *SQLStore, hook func()) { s.claimHook = hook }

// ExplainPostgresClaim returns the plan of the claim req would run, with the
// claim's own preparation (or without it, to show what it prevents). The
// transaction is rolled back: nothing is claimed.
func ExplainPostgresClaim(ctx context.Context, s *SQLStore, req ClaimRequest, prepared bool) (string, error) {
	c := s.postgresClaim("explain", req)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback() //nolint:errcheck // nothing to keep
	if prepared {
		if _, err := tx.ExecContext(ctx, c.prepare, c.prepareArgs...); err != nil {
			return "", err
		}
	}
	rows, err := tx.QueryContext(ctx, "EXPLAIN "+c.query, c.args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line sql.NullString
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		plan = append(plan, line.String)
	}
	return strings.Join(plan, "\n"), rows.Err()
}
