package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "modernc.org/sqlite"             // driver "sqlite"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// claimTimer is a Store decorator that records how long each Claim takes
// while on.
type claimTimer struct {
	relaystore.Store
	on   atomic.Bool
	mu   sync.Mutex
	durs []time.Duration
	rows int
}

func (c *claimTimer) Claim(ctx context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	start := time.Now()
	cl, err := c.Store.Claim(ctx, req)
	d := time.Since(start)
	if c.on.Load() {
		c.mu.Lock()
		c.durs = append(c.durs, d)
		c.rows += len(cl.Rows)
		c.mu.Unlock()
	}
	return cl, err
}

// claimStats sums up the claims a claimTimer recorded.
type claimStats struct {
	n        int
	rows     int
	p50, max time.Duration
}

// take returns the stats so far and starts afresh.
func (c *claimTimer) take() claimStats {
	st := c.stats()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.durs, c.rows = nil, 0
	return st
}

func (c *claimTimer) stats() claimStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := claimStats{n: len(c.durs), rows: c.rows}
	if s.n > 0 {
		d := slices.Clone(c.durs)
		slices.Sort(d)
		s.p50, s.max = d[len(d)/2], d[len(d)-1]
	}
	return s
}

func (s claimStats) fields(prefix string) []string {
	return []string{
		prefix + "_claim_p50=" + roundDur(s.p50).String(),
		prefix + "_claim_max=" + roundDur(s.max).String(),
		prefix + "_claims=" + strconv.Itoa(s.n),
	}
}

// failingPublisher fails, with a plain (transient) error, every Publish of
// a message fails picks; the others go to the destination.
type failingPublisher struct {
	message.Publisher
	fails  func(topic string, m *message.Message) bool
	failed atomic.Int64
}

func (p *failingPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if p.fails(topic, m) {
			p.failed.Add(1)
			return errors.New("bench: publish refused on purpose (the row must back off)")
		}
	}
	return p.Publisher.Publish(topic, msgs...)
}

// Close leaves the destination open: the drain that made it closes it.
func (p *failingPublisher) Close() error { return nil }

// scenarioDB opens the database -db names, for stuck-key and waiting.
func (r *runner) scenarioDB() (*sql.DB, outbox.Dialect, func(), error) {
	switch r.o.db {
	case "postgres":
		return r.db, outbox.PostgreSQL, func() {}, nil
	case "mysql":
		db, err := openDB("mysql", "MySQL", r.o.mysqlDSN)
		if err != nil {
			return nil, "", nil, err
		}
		return db, outbox.MySQL, func() { _ = db.Close() }, nil
	case "sqlite":
		dir, err := os.MkdirTemp("", "outbox-bench-")
		if err != nil {
			return nil, "", nil, err
		}
		path := filepath.Join(dir, "outbox.db")
		db, err := sql.Open("sqlite", "file:"+path+"?"+outbox.SQLiteConnParams)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, "", nil, err
		}
		db.SetMaxOpenConns(1)
		logf("SQLite in %s", path)
		return db, outbox.SQLite, func() { _ = db.Close(); _ = os.RemoveAll(dir) }, nil
	}
	return nil, "", nil, fmt.Errorf("unknown -db %q (want postgres, mysql or sqlite)", r.o.db)
}

// seedRows commits n messages, message i being gen(i), through s's
// publisher in transactions of 10,000 rows (INSERTs of 1,000 rows each, the
// rows exactly as our Publisher writes them).
func seedRows(ctx context.Context, s *ourSide, topic string, n int, gen func(i int) *message.Message) error {
	const perTx = 10000
	start := time.Now()
	for lo := 0; lo < n; lo += perTx {
		hi := min(lo+perTx, n)
		msgs := make([]*message.Message, 0, hi-lo)
		for i := lo; i < hi; i++ {
			msgs = append(msgs, gen(i))
		}
		if err := commitEvents(ctx, s, topic, msgs); err != nil {
			return err
		}
		if n >= 200000 && hi%100000 == 0 {
			logf("  seeded %d of %d rows (%s)", hi, n, rate(hi, time.Since(start)))
		}
	}
	if n >= 50000 {
		logf("  seeded %d rows in %s (%s)", n, time.Since(start).Round(time.Millisecond), rate(n, time.Since(start)))
	}
	return nil
}

func (s *ourSide) count(ctx context.Context, where string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.table+` WHERE `+where).Scan(&n)
	return n, err
}

// failOnce runs s's relay through a destination failing the rows fails
// picks, until want rows were attempted once, then stops it: those rows
// now back off (RetryBackoffMin of s's config), and with ordering on hold
// back the rows behind them. Not timed.
func (r *runner) failOnce(s *ourSide, topic string, want int, fails func(string, *message.Message) bool) error {
	ctx := context.Background()
	pub, err := r.b.ourPublisher()
	if err != nil {
		return err
	}
	defer pub.Close()
	fp := &failingPublisher{Publisher: pub, fails: fails}
	s.wrapDest = func(p message.Publisher) message.Publisher { fp.Publisher = p; return fp }
	defer func() { s.wrapDest = nil }()
	start := time.Now()
	stop, err := s.startRelay(pub)
	if err != nil {
		return err
	}
	defer stop()
	deadline := time.Now().Add(r.o.timeout)
	last := time.Now()
	for {
		n, err := s.count(ctx, "attempts > 0")
		if err != nil {
			return err
		}
		if n >= want {
			logf("  %d rows failed once and back off (%s, %d failed publishes)", n, time.Since(start).Round(time.Millisecond), fp.failed.Load())
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("setup: only %d of %d rows were attempted within %s", n, want, r.o.timeout)
		}
		if time.Since(last) > 10*time.Second {
			logf("  %d of %d rows attempted once…", n, want)
			last = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// timedDrain runs s's relay, its store wrapped in a claimTimer and its
// destination failing what fails picks, until a consumer on topic received
// want messages; the time and the claims are those of that drain.
func (r *runner) timedDrain(s *ourSide, topic string, want int, fails func(string, *message.Message) bool) (time.Duration, claimStats, error) {
	c, err := r.b.consume(topic, want)
	if err != nil {
		return 0, claimStats{}, err
	}
	defer c.stop()
	pub, err := r.b.ourPublisher()
	if err != nil {
		return 0, claimStats{}, err
	}
	defer pub.Close()
	timer := &claimTimer{}
	s.wrapStore = func(st relaystore.Store) relaystore.Store { timer.Store = st; return timer }
	fp := &failingPublisher{fails: fails}
	s.wrapDest = func(p message.Publisher) message.Publisher { fp.Publisher = p; return fp }
	defer func() { s.wrapStore, s.wrapDest = nil, nil }()
	timer.on.Store(true)
	start := time.Now()
	stop, err := s.startRelay(pub)
	if err != nil {
		return 0, claimStats{}, err
	}
	err = c.wait(r.o.timeout)
	elapsed := time.Since(start)
	timer.on.Store(false)
	stop()
	if err != nil {
		return 0, claimStats{}, err
	}
	st := timer.stats()
	logf("  %d events in %s (%s); %d claims took %d rows, median %s, max %s; %d publishes refused",
		want, elapsed.Round(time.Millisecond), rate(want, elapsed), st.n, st.rows, roundDur(st.p50), roundDur(st.max), fp.failed.Load())
	return elapsed, st, nil
}

// blockedCase describes stuck-key, blocked-keys and waiting: rows that
// back off, and the free rows measured past them.
type blockedCase struct {
	unordered bool
	// The blocked rows' topic is the free rows' topic and suffix; blocked
	// is blocked row i's key; heads is how many of them must fail once.
	suffix  string
	blocked func(i int) (key string)
	heads   int
	// fails picks the messages the destination refuses.
	fails func(freeTopic string) func(topic string, m *message.Message) bool
	what  string // for the log
}

// blockedRun measures the free rows' drain past blocked rows, and on a
// fresh table without them.
func (r *runner) blockedRun(bc blockedCase) (result, error) {
	ctx := context.Background()
	db, dialect, closeDB, err := r.scenarioDB()
	if err != nil {
		return result{}, err
	}
	defer closeDB()
	cfg := r.ourConfig()
	cfg.RetryBackoffMin, cfg.RetryBackoffMax = r.o.backoff, r.o.backoff
	cfg.DisableOrdering = bc.unordered
	free := make([]*message.Message, r.o.n)
	for i := range free {
		free[i] = newMessage(i, r.o.payload, keyOf(i, r.o.keys))
	}

	// With the blocked rows.
	s := newOurSideOn(db, dialect, runID(), cfg)
	if err := s.setup(ctx); err != nil {
		return result{}, err
	}
	defer s.cleanup()
	topic := "bench_blocked_" + runID()
	drop, err := r.b.prepare(topic)
	if err != nil {
		return result{}, err
	}
	defer drop()
	fails := bc.fails(topic)
	logf("%s: seeding %d rows that will back off (%s)", r.o.scenario, r.o.backlog, bc.what)
	if err := seedRows(ctx, s, topic+bc.suffix, r.o.backlog, func(i int) *message.Message {
		return newMessage(i, r.o.payload, bc.blocked(i))
	}); err != nil {
		return result{}, err
	}
	if err := r.failOnce(s, topic, bc.heads, fails); err != nil {
		return result{}, err
	}
	if err := seedRows(ctx, s, topic, len(free), func(i int) *message.Message { return free[i] }); err != nil {
		return result{}, err
	}
	logf("%s: draining %d free rows past them", r.o.scenario, len(free))
	blockedTime, blockedClaims, err := r.timedDrain(s, topic, len(free), fails)
	if err != nil {
		return result{}, fmt.Errorf("with blocked rows: %w", err)
	}
	left, err := s.count(ctx, "state = 'pending'")
	if err != nil {
		return result{}, err
	}
	if left != r.o.backlog {
		logf("  note: %d rows pending after the drain, %d expected (the blocked ones)", left, r.o.backlog)
	}

	// The same free rows on a fresh table.
	s2 := newOurSideOn(db, dialect, runID(), cfg)
	if err := s2.setup(ctx); err != nil {
		return result{}, err
	}
	defer s2.cleanup()
	topic2 := "bench_free_" + runID()
	drop2, err := r.b.prepare(topic2)
	if err != nil {
		return result{}, err
	}
	defer drop2()
	if err := seedRows(ctx, s2, topic2, len(free), func(i int) *message.Message { return free[i] }); err != nil {
		return result{}, err
	}
	logf("%s: the same %d rows on a fresh table", r.o.scenario, len(free))
	cleanTime, cleanClaims, err := r.timedDrain(s2, topic2, len(free), bc.fails(topic2))
	if err != nil {
		return result{}, fmt.Errorf("without blocked rows: %w", err)
	}

	label := map[string]string{"stuck-key": "stuck", "blocked-keys": "blocked", "waiting": "waiting"}[r.o.scenario]
	fields := []string{
		"db=" + r.o.db, "backlog=" + strconv.Itoa(r.o.backlog), "keys=" + strconv.Itoa(r.o.keys),
		label + "=" + rate(len(free), blockedTime), "clean=" + rate(len(free), cleanTime),
		fmt.Sprintf("ratio=%.2f", cleanTime.Seconds()/blockedTime.Seconds()),
	}
	fields = append(fields, blockedClaims.fields(label)...)
	fields = append(fields, cleanClaims.fields("clean")...)
	return result{fields: fields}, nil
}

func (r *runner) stuckKey() (result, error) {
	return r.blockedRun(blockedCase{
		blocked: func(int) string { return "hot" },
		heads:   1,
		fails: func(string) func(string, *message.Message) bool {
			return func(_ string, m *message.Message) bool {
				return m.Metadata.Get(outbox.PartitionKeyMetadataKey) == "hot"
			}
		},
		what: `key "hot"`,
	})
}

func (r *runner) blockedKeys() (result, error) {
	keys := max(r.o.keys, 1)
	return r.blockedRun(blockedCase{
		blocked: func(i int) string { return "blocked-" + strconv.Itoa(i%keys) },
		heads:   min(keys, r.o.backlog),
		fails: func(string) func(string, *message.Message) bool {
			return func(_ string, m *message.Message) bool {
				return strings.HasPrefix(m.Metadata.Get(outbox.PartitionKeyMetadataKey), "blocked-")
			}
		},
		what: fmt.Sprintf("%d keys, %d rows each", keys, r.o.backlog/keys),
	})
}

func (r *runner) waiting() (result, error) {
	return r.blockedRun(blockedCase{
		unordered: true,
		suffix:    "_failing",
		blocked: func(i int) string {
			if k := keyOf(i, r.o.keys); k != "" {
				return "waiting-" + k
			}
			return ""
		},
		heads: r.o.backlog,
		fails: func(freeTopic string) func(string, *message.Message) bool {
			return func(topic string, _ *message.Message) bool { return topic != freeTopic }
		},
		what: "a topic whose publishes fail, ordering off",
	})
}
