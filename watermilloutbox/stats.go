package watermilloutbox

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Stats is the state of the outbox table per destination topic, read in
// one bounded pass (see SQLStore.Stats).
type Stats struct {
	// Topics has an entry per topic with undelivered or dead rows, in
	// topic order.
	Topics []TopicStats
}

// TopicStats is the state of one topic's rows. An undelivered row is in
// exactly one of Pending, Waiting, Leased and Orphaned.
type TopicStats struct {
	Topic string
	// Pending counts the rows due now (available_at passed) that no relay
	// holds: what the relays have still to take.
	Pending int
	// Waiting counts the rows backing off after a failed attempt, not due
	// yet.
	Waiting int
	// Leased counts the rows a live relay has claimed and holds a lease on.
	Leased int
	// Orphaned counts the rows still under the lease of a relay that is
	// gone (its heartbeat expired, see relaystore.RelayRegistry): the next claim of
	// any live relay takes them over. A count that stays above zero means
	// no relay is claiming.
	Orphaned int
	// Dead counts the rows the relay gave up on (see ListDead, Requeue).
	Dead int
	// OldestPending is the age of the topic's oldest undelivered row
	// (pending, waiting or leased), by the database's clock; zero when there
	// is none. It is what to alert on: a relay that is down or stuck shows
	// as a growing age whatever the rate.
	OldestPending time.Duration
	// OldestLeased is the age of the topic's oldest leased or orphaned row
	// since it was written: how long a key has waited on a lease. A relay
	// stuck on a publish, or a dead one nobody took over from, shows here.
	// Zero when no row is leased.
	OldestLeased time.Duration
	// OldestDead is the age of the topic's oldest dead row since it was
	// written; zero when there is none.
	OldestDead time.Duration
	// BacklogCapped reports that the topic has more undelivered rows than
	// StatsLimit: Pending, Waiting, Leased and Orphaned then count its
	// StatsLimit oldest ones, and their sum is StatsLimit. OldestPending
	// is exact.
	BacklogCapped bool
	// DeadCapped: likewise for Dead.
	DeadCapped bool
	// BacklogEstimate, set only when BacklogCapped, is the planner's
	// estimate of the topic's undelivered rows: an estimate, not a count
	// (see SQLStore.Stats for its error). Zero on SQLite, which keeps no
	// statistics to estimate from.
	BacklogEstimate int64
}

// Undelivered is Pending + Waiting + Leased + Orphaned.
func (t TopicStats) Undelivered() int { return t.Pending + t.Waiting + t.Leased + t.Orphaned }

// Stats reads the table's state per topic. Its cost is bounded whatever
// the backlog: one index descent per topic finds the topics (backlog_idx,
// dead_idx), and each topic's oldest StatsLimit undelivered and dead rows
// are read through the same indexes, oldest first; published rows (kept
// for PublishedRetention) are never read. Two statements: the topics, then
// their rows.
//
// For a topic past StatsLimit it adds BacklogEstimate, one planner
// estimate (no rows read): on PostgreSQL the row estimate of the
// backlog_idx scan for the topic (EXPLAIN), from the table's statistics,
// which autovacuum's ANALYZE refreshes after 10 % of the table changed, so
// it can lag a growing backlog by that much; on MariaDB/MySQL the range
// optimizer's estimate of the same index range, from dives into the index
// (InnoDB: within a few percent for large ranges). Measured figures are in
// docs/operating.md.
func (s *SQLStore) Stats(ctx context.Context) (Stats, error) {
	if err := s.checkDialect(ctx); err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: %w", err)
	}
	topics, err := s.statsTopics(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: topics: %w", err)
	}
	out := Stats{Topics: make([]TopicStats, len(topics))}
	if len(topics) == 0 {
		return out, nil
	}
	for i, name := range topics {
		out.Topics[i].Topic = name
	}
	q, args := s.statsQuery(topics)
	rs, err := s.db.query(ctx, q, args...)
	if err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var part, n, pending, waiting, leased, orphaned int
		var oldest, oldestLeased *int64
		if err := rs.Scan(&part, &n, &pending, &waiting, &leased, &orphaned, &oldest, &oldestLeased); err != nil {
			return Stats{}, fmt.Errorf("outbox: stats: %w", err)
		}
		ts := &out.Topics[part/2]
		age := func(micros *int64) time.Duration {
			if micros == nil {
				return 0
			}
			return max(time.Duration(*micros)*time.Microsecond, 0)
		}
		if part%2 == 0 {
			ts.Pending, ts.Waiting, ts.Leased, ts.Orphaned, ts.BacklogCapped = pending, waiting, leased, orphaned, n >= StatsLimit
			ts.OldestPending, ts.OldestLeased = age(oldest), age(oldestLeased)
		} else {
			ts.Dead, ts.OldestDead, ts.DeadCapped = n, age(oldest), n >= StatsLimit
		}
	}
	if err := rs.Err(); err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: %w", err)
	}
	rs.Close()
	for i := range out.Topics {
		if out.Topics[i].BacklogCapped {
			n, err := s.estimateBacklog(ctx, out.Topics[i].Topic)
			if err != nil {
				return Stats{}, fmt.Errorf("outbox: stats: estimate: %w", err)
			}
			out.Topics[i].BacklogEstimate = max(n, StatsLimit)
		}
	}
	return out, nil
}

// statsTopics lists the topics with undelivered or dead rows, in order.
func (s *SQLStore) statsTopics(ctx context.Context) ([]string, error) {
	names, err := queryColumn[string](ctx, s.db, s.t.d.statsTopics(s.t))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// statsQuery reads, for each topic, its oldest StatsLimit undelivered rows
// (part 2i) and dead rows (part 2i+1), as counts, the oldest age and the
// oldest leased row's age in microseconds.
func (s *SQLStore) statsQuery(topics []string) (string, []any) {
	t := s.t
	now, nowMicros := t.now(), t.nowMicros()
	flag := func(cond string) string { return "CASE WHEN " + cond + " THEN 1 ELSE 0 END" }
	unleased := "(claimed_until IS NULL OR claimed_until < " + now + ")"
	dead := t.heldByDead("", "")
	var parts []string
	var args []any
	for i, name := range topics {
		for j, state := range []string{backlogPredicate, "state = 'dead'"} {
			args = append(args, name, StatsLimit)
			parts = append(parts, `SELECT `+strconv.Itoa(2*i+j)+`, count(*), coalesce(sum(due), 0), coalesce(sum(backoff), 0), coalesce(sum(leased), 0), `+
				`coalesce(sum(orphaned), 0), `+nowMicros+` - min(created), `+nowMicros+` - min(CASE WHEN leased = 1 OR orphaned = 1 THEN created END) FROM (SELECT `+
				flag("available_at <= "+now+" AND "+unleased)+` AS due, `+
				flag("available_at > "+now+" AND "+unleased)+` AS backoff, `+flag("claimed_until >= "+now+" AND NOT "+dead)+` AS leased, `+
				flag("claimed_until >= "+now+" AND "+dead)+` AS orphaned, `+
				t.epochMicros("created_at")+` AS created FROM `+t.quoted+` WHERE `+state+` AND topic = `+t.p(len(args)-1)+
				` ORDER BY id LIMIT `+t.p(len(args))+`) r`+strconv.Itoa(2*i+j))
		}
	}
	return strings.Join(parts, "\nUNION ALL\n"), args
}
