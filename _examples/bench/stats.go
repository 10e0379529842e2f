package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// statsScenario times SQLStore.Stats on PostgreSQL over a table with a
// backlog of -backlog (1,000,000) pending rows over 5 topics, then over the
// same rows kept as published (retention) with 1,000 pending ones, before
// and after a VACUUM: its cost must not follow either.
func (r *runner) statsScenario() (result, error) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Table = "bench_stats_" + runID()
	store, err := outbox.NewSQLStore(r.db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, nil)
	if err != nil {
		return result{}, err
	}
	if err := store.Migrate(ctx); err != nil {
		return result{}, err
	}
	defer r.db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table) //nolint:errcheck // best effort
	insert := func(n int) error {
		// The rows the Publisher writes, written in bulk: 5 topics, half of
		// the rows keyed over 1,000 keys.
		_, err := r.db.ExecContext(ctx, `INSERT INTO `+cfg.Table+` (uuid, topic, partition_key, payload, metadata)
SELECT gen_random_uuid()::text, 'topic-' || (g % 5), CASE WHEN g % 2 = 0 THEN 'key-' || (g % 1000) END,
  convert_to(repeat('x', 256), 'UTF8'), '{}' FROM generate_series(1, $1) g`, n)
		return err
	}
	measure := func(label string) ([]time.Duration, error) {
		var times []time.Duration
		for range 7 {
			start := time.Now()
			st, err := store.Stats(ctx)
			if err != nil {
				return nil, err
			}
			times = append(times, time.Since(start))
			if len(times) == 1 {
				for _, ts := range st.Topics {
					logf("  %s: %s pending=%d waiting=%d leased=%d dead=%d oldest=%s capped=%v",
						label, ts.Topic, ts.Pending, ts.Waiting, ts.Leased, ts.Dead, ts.OldestPending.Round(time.Millisecond), ts.BacklogCapped)
				}
			}
		}
		slices.Sort(times)
		logf("stats %s: median %s, max %s over %d calls", label, times[len(times)/2].Round(10*time.Microsecond), times[len(times)-1].Round(10*time.Microsecond), len(times))
		return times, nil
	}

	start := time.Now()
	if err := insert(r.o.backlog); err != nil {
		return result{}, err
	}
	logf("stats: %d pending rows written in %s", r.o.backlog, time.Since(start).Round(time.Millisecond))
	pending, err := measure("pending")
	if err != nil {
		return result{}, err
	}
	if _, err := r.db.ExecContext(ctx, `UPDATE `+cfg.Table+` SET state = 'published', published_at = now()`); err != nil {
		return result{}, err
	}
	if err := insert(1000); err != nil {
		return result{}, err
	}
	logf("stats: the %d rows are now published (kept for retention), 1,000 pending", r.o.backlog)
	// The first call after the UPDATE walks the index entries the
	// published rows left behind in backlog_idx (and PostgreSQL marks them
	// dead as it goes); autovacuum removes them. Both are measured.
	published, err := measure("published")
	if err != nil {
		return result{}, err
	}
	if _, err := r.db.ExecContext(ctx, `VACUUM `+cfg.Table); err != nil {
		return result{}, err
	}
	vacuumed, err := measure("published, after vacuum")
	if err != nil {
		return result{}, err
	}
	ms := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + "ms"
	}
	return result{n: r.o.backlog, fields: []string{
		fmt.Sprintf("pending_p50=%s", ms(pending[len(pending)/2])), fmt.Sprintf("pending_max=%s", ms(pending[len(pending)-1])),
		fmt.Sprintf("published_p50=%s", ms(published[len(published)/2])), fmt.Sprintf("published_max=%s", ms(published[len(published)-1])),
		fmt.Sprintf("vacuumed_p50=%s", ms(vacuumed[len(vacuumed)/2])), fmt.Sprintf("vacuumed_max=%s", ms(vacuumed[len(vacuumed)-1])),
		"limit=" + strconv.Itoa(outbox.StatsLimit),
	}}, nil
}
