package inbox

import (
	"context"
	"fmt"
	"time"
)

// Purge deletes this consumer's records older than Config.Retention, in
// batches of Config.PurgeBatchSize rows (one short statement each), until
// none is left or ctx ends, and returns how many it deleted. A message
// delivered again after its record is purged is applied again. Run it
// periodically (daily suffices) from one instance, or from the command
// line ('watermill-outbox inbox purge').
func (in *Inbox) Purge(ctx context.Context) (int, error) {
	return in.purge(ctx, in.config.Retention)
}

func (in *Inbox) purge(ctx context.Context, olderThan time.Duration) (int, error) {
	q, args := in.t.purgeQuery(in.config.Consumer, olderThan.Microseconds(), in.config.PurgeBatchSize)
	total := 0
	for {
		n, err := in.db.exec(ctx, q, args...)
		total += int(n)
		if err != nil {
			return total, fmt.Errorf("inbox: purge %s: %w", in.t.name, err)
		}
		if int(n) < in.config.PurgeBatchSize {
			return total, nil
		}
	}
}

// ConsumerStats describes one consumer's records.
type ConsumerStats struct {
	Consumer string
	// Records is how many messages the consumer has applied within the
	// dedup window (and not purged yet).
	Records int64
	// Oldest is the age of the oldest record: past Retention, Purge is due.
	Oldest time.Duration
}

// Stats returns every consumer's records in the table, by consumer name.
// It reads the whole table (a count per consumer), so it costs what the
// table holds: poll it every minute or so, not per message.
func (in *Inbox) Stats(ctx context.Context) ([]ConsumerStats, error) {
	var out []ConsumerStats
	err := in.db.each(ctx, in.t.statsQuery(), nil, func(scan func(...any) error) error {
		var s ConsumerStats
		var micros int64
		if err := scan(&s.Consumer, &s.Records, &micros); err != nil {
			return err
		}
		s.Oldest = time.Duration(micros) * time.Microsecond
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: stats %s: %w", in.t.name, err)
	}
	return out, nil
}
