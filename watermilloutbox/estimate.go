package watermilloutbox

import "context"

// estimateBacklog asks the planner how many undelivered rows topic has,
// reading no rows (see Stats for the error of each dialect's figure).
// SQLite keeps no statistics: 0.
func (s *SQLStore) estimateBacklog(ctx context.Context, topic string) (int64, error) {
	return s.t.d.estimateBacklog(ctx, s.db, s.t, topic)
}
