package watermilloutbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// estimateBacklog asks the planner how many undelivered rows topic has,
// reading no rows (see Stats for the error of each dialect's figure).
// SQLite keeps no statistics: 0.
func (s *SQLStore) estimateBacklog(ctx context.Context, topic string) (int64, error) {
	t := s.t
	switch t.dialect {
	case PostgreSQL:
		var plan []byte
		if err := s.db.queryRow(ctx, `EXPLAIN (FORMAT JSON) SELECT 1 FROM `+t.quoted+` WHERE `+backlogPredicate+` AND topic = $1`, topic).Scan(&plan); err != nil {
			return 0, err
		}
		var out []struct {
			Plan struct {
				Rows float64 `json:"Plan Rows"`
			} `json:"Plan"`
		}
		if err := json.Unmarshal(plan, &out); err != nil || len(out) == 0 {
			return 0, fmt.Errorf("read the plan: %v", err)
		}
		return int64(out[0].Plan.Rows), nil
	case MySQL:
		// A range (id > 0) rather than an equality on the index prefix: the
		// optimizer dives into the index for a range, where for an
		// equality it would take the index's average rows per value.
		// (MySQL is reached through database/sql only.)
		rs, err := s.sqlDB.QueryContext(ctx, `EXPLAIN SELECT 1 FROM `+t.quoted+` FORCE INDEX (`+t.index("backlog_idx")+
			`) WHERE state = 'pending' AND topic = ? AND id > 0`, topic)
		if err != nil {
			return 0, err
		}
		defer rs.Close()
		cols, err := rs.Columns()
		if err != nil {
			return 0, err
		}
		var n int64
		for rs.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				return 0, err
			}
			for i, c := range cols {
				if strings.EqualFold(c, "rows") && vals[i] != nil {
					var v int64
					if _, err := fmt.Sscan(fmt.Sprint(asString(vals[i])), &v); err == nil {
						n += v
					}
				}
			}
		}
		return n, rs.Err()
	default:
		return 0, nil
	}
}

func asString(v any) any {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return v
}
