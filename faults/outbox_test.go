//go:build faults

package faults_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// seqMetadataKey carries an event's position among the events of its
// partition key, in the order they were written.
const seqMetadataKey = "seq"

// event is what a scenario knows of an event it wrote.
type event struct {
	key string
	seq int
}

// delivery is one message seen at the broker.
type delivery struct {
	uuid string
	key  string
	seq  int
}

// scenario is one scenario's outbox: its own table on a real database, the
// events committed to it, and the relay settings that go with it.
type scenario struct {
	t       *testing.T
	dialect outbox.Dialect
	dsn     string
	db      *sql.DB
	// reads is the handle the checks read through: db, or a direct one
	// when db is a transaction pooler (readDirect).
	reads *sql.DB
	// countErr is the last error of count (a wait that times out shows
	// it), nil once one succeeds.
	countErr atomic.Value
	// pool is set when the scenario runs over pgx: its service commits in
	// pgx transactions and its relays run with --driver pgx.
	pool  *pgxpool.Pool
	table string
	topic string
	pub   *outbox.Publisher

	mu        sync.Mutex
	committed map[string]event
	// uncertain events were in a transaction whose COMMIT failed (the
	// database went away): it may or may not have committed. resolve
	// looks them up; rows are kept after publishing (retention), so the
	// table says which committed.
	uncertain map[string]event
	nextSeq   map[string]int
}

// postgresDrivers runs a PostgreSQL scenario twice: with database/sql, and
// with pgx (the service's transactions and the relay's store over pgx
// pools).
func postgresDrivers(t *testing.T, run func(t *testing.T, newScenario func(*testing.T) *scenario)) {
	t.Run("database_sql", func(t *testing.T) {
		run(t, func(t *testing.T) *scenario { return newScenario(t, outbox.PostgreSQL) })
	})
	t.Run("pgx", func(t *testing.T) {
		run(t, func(t *testing.T) *scenario {
			s := newScenario(t, outbox.PostgreSQL)
			s.pool = testenv.PostgresPool(t)
			return s
		})
	})
}

func newScenario(t *testing.T, dialect outbox.Dialect) *scenario {
	t.Helper()
	switch dialect {
	case outbox.PostgreSQL:
		return newScenarioOn(t, dialect, testenv.Postgres(t), testenv.PostgresDSN())
	case outbox.MySQL:
		return newScenarioOn(t, dialect, testenv.MySQL(t), testenv.MySQLDSN())
	}
	t.Fatalf("no fault scenarios on %s", dialect)
	return nil
}

// newScenarioOn makes a scenario on db, which dsn (the relays' database
// URL) reaches too: the service commits, and the checks read, through db
// (unless readDirect).
func newScenarioOn(t *testing.T, dialect outbox.Dialect, db *sql.DB, dsn string) *scenario {
	t.Helper()
	s := &scenario{t: t, dialect: dialect, db: db, reads: db, dsn: dsn, committed: map[string]event{}, uncertain: map[string]event{}, nextSeq: map[string]int{}}
	s.table = testenv.TableName(t)
	s.topic = "faults_" + strings.TrimPrefix(s.table, "t_")
	store, err := outbox.NewSQLStore(s.db, outbox.SQLStoreConfig{Dialect: dialect, Outbox: config.Config{Table: s.table}}, nil)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	t.Cleanup(func() { _, _ = s.db.Exec(`DROP TABLE IF EXISTS ` + s.table) })
	t.Cleanup(func() { _, _ = s.db.Exec(`DROP TABLE IF EXISTS ` + s.table + `_relays`) })
	s.pub, err = outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
	require.NoError(t, err)
	watchScenario(t, s)
	return s
}

// readDirect makes the checks read PostgreSQL over a direct connection
// while the service commits through db, a transaction pooler. pgx's
// database/sql driver prepares each statement under a name derived from
// its text and caches it per client connection; behind PgBouncer in
// transaction pooling the statement lands on a pooled server connection,
// where it outlives the client's cache. Once every server connection the
// client is given holds it, the client's next prepare fails with 42P05
// ("prepared statement ... already exists") on each of them, for good:
// count, polled hundreds of times a scenario, then failed on every poll,
// and a drained outbox looked stalled.
func (s *scenario) readDirect() {
	s.reads = testenv.Postgres(s.t)
}

// relayEnv is the relay's environment for this scenario: its database and
// table, fast polling and short backoffs, and retention, so rows stay after
// publishing and their state and attempts can be checked.
func (s *scenario) relayEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"OUTBOX_DATABASE_URL":                s.dsn,
		"OUTBOX_TABLE":                       s.table,
		"OUTBOX_POLLING_INTERVAL_SECONDS":    "0.05",
		"OUTBOX_RETRY_BACKOFF_MIN_SECONDS":   "0.1",
		"OUTBOX_RETRY_BACKOFF_MAX_SECONDS":   "1",
		"OUTBOX_PUBLISHED_RETENTION_SECONDS": "3600",
	}
	if s.pool != nil {
		env["OUTBOX_DATABASE_DRIVER"] = "pgx"
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// newEvents makes n messages, the i-th with partition key keyOf(i) (none
// when keyOf is nil or returns ""), numbered per key in the order made.
func (s *scenario) newEvents(n int, keyOf func(i int) string) []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		key := ""
		if keyOf != nil {
			key = keyOf(i)
		}
		seq := s.nextSeq[key]
		s.nextSeq[key]++
		m := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"key":%q,"seq":%d}`, key, seq)))
		m.Metadata.Set(seqMetadataKey, strconv.Itoa(seq))
		if key != "" {
			m.Metadata.Set(outbox.PartitionKeyMetadataKey, key)
		}
		msgs[i] = m
	}
	return msgs
}

// commit publishes msgs to topic in one transaction and remembers them as
// committed, or as uncertain when COMMIT itself failed.
func (s *scenario) commit(topic string, msgs ...*message.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if s.pool != nil {
		err = s.commitPgx(ctx, topic, msgs)
	} else {
		err = s.commitSQL(ctx, topic, msgs)
	}
	if errors.Is(err, errNotWritten) {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	into := s.committed
	if err != nil {
		into = s.uncertain
	}
	for _, m := range msgs {
		into[m.UUID] = eventOf(m)
	}
	return err
}

// errNotWritten: the events were not written (no COMMIT was tried).
var errNotWritten = errors.New("events not written")

func (s *scenario) commitSQL(ctx context.Context, topic string, msgs []*message.Message) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errors.Join(errNotWritten, err)
	}
	if err := s.pub.WithTx(tx).Publish(topic, msgs...); err != nil {
		_ = tx.Rollback()
		return errors.Join(errNotWritten, err)
	}
	return tx.Commit()
}

func (s *scenario) commitPgx(ctx context.Context, topic string, msgs []*message.Message) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return errors.Join(errNotWritten, err)
	}
	if err := s.pub.WithPgxTx(tx).Publish(topic, msgs...); err != nil {
		_ = tx.Rollback(ctx)
		return errors.Join(errNotWritten, err)
	}
	return tx.Commit(ctx)
}

func eventOf(m *message.Message) event {
	seq, _ := strconv.Atoi(m.Metadata.Get(seqMetadataKey))
	return event{key: m.Metadata.Get(outbox.PartitionKeyMetadataKey), seq: seq}
}

// prewrite commits n events on the scenario's topic, perTx to a transaction.
func (s *scenario) prewrite(n, perTx int, keyOf func(i int) string) {
	s.t.Helper()
	msgs := s.newEvents(n, keyOf)
	for start := 0; start < n; start += perTx {
		require.NoError(s.t, s.commit(s.topic, msgs[start:min(start+perTx, n)]...))
	}
}

// writer commits events the way a service does, a few per transaction, all
// the time, including while a service is away (its failed transactions are
// retried with new events after a pause).
type writer struct {
	stopCh  chan struct{}
	done    chan struct{}
	written atomic.Int64
	failed  atomic.Int64
}

func (s *scenario) startWriter(perTx int, every time.Duration, keys int) *writer {
	w := &writer{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		i := 0
		for {
			select {
			case <-w.stopCh:
				return
			case <-tick.C:
			}
			msgs := s.newEvents(perTx, func(int) string { i++; return fmt.Sprintf("key-%d", i%keys) })
			if err := s.commit(s.topic, msgs...); err != nil {
				w.failed.Add(1)
				continue
			}
			w.written.Add(int64(perTx))
		}
	}()
	return w
}

// stop stops the writer and returns how many events it committed for sure.
func (w *writer) stop() int {
	close(w.stopCh)
	<-w.done
	return int(w.written.Load())
}

// count runs SELECT count(*) with where; errors (the database may be away)
// come back as -1.
func (s *scenario) count(where string, args ...any) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	err := s.reads.QueryRowContext(ctx, `SELECT count(*) FROM `+s.table+` WHERE `+where, args...).Scan(&n)
	s.countErr.Store(struct{ error }{err})
	if err != nil {
		return -1
	}
	return n
}

func (s *scenario) pending() int   { return s.count(`state = 'pending'`) }
func (s *scenario) published() int { return s.count(`state = 'published'`) }

// waitFor polls cond on a ticker until it holds, failing t after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, 50*time.Millisecond, timeout, what, cond)
}

// waitFast is waitFor polling every 5ms, to act on a moment of a fast drain.
func waitFast(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, 5*time.Millisecond, timeout, what, cond)
}

func poll(t *testing.T, every, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			diagnoseStall(t)
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// waitDrained waits until no row is pending: every committed event is
// published (confirmed by the broker) or dead.
func (s *scenario) waitDrained(timeout time.Duration) {
	s.t.Helper()
	waitFor(s.t, timeout, "the outbox to drain", func() bool { return s.pending() == 0 })
}

// placeholder returns the dialect's n-th bind marker.
func (s *scenario) placeholder(n int) string {
	if s.dialect == outbox.PostgreSQL {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// resolve moves uncertain events whose row exists to committed and drops
// the others (their transaction rolled back).
func (s *scenario) resolve() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for uuid, ev := range s.uncertain {
		var n int
		require.NoError(s.t, s.reads.QueryRow(`SELECT count(*) FROM `+s.table+` WHERE uuid = `+s.placeholder(1), uuid).Scan(&n))
		if n > 0 {
			s.committed[uuid] = ev
		}
	}
	if len(s.uncertain) > 0 {
		s.t.Logf("%d events had a failed COMMIT; resolved from the table", len(s.uncertain))
	}
	s.uncertain = map[string]event{}
}

// deadRows returns the dead rows' UUIDs and last errors.
func (s *scenario) deadRows() map[string]string {
	s.t.Helper()
	rows, err := s.reads.Query(`SELECT uuid, last_error FROM ` + s.table + ` WHERE state = 'dead'`)
	require.NoError(s.t, err)
	defer rows.Close()
	dead := map[string]string{}
	for rows.Next() {
		var uuid string
		var lastErr sql.NullString
		require.NoError(s.t, rows.Scan(&uuid, &lastErr))
		dead[uuid] = lastErr.String
	}
	require.NoError(s.t, rows.Err())
	return dead
}

// row returns one row's state, attempts and last error.
func (s *scenario) row(uuid string) (state string, attempts int, lastErr string) {
	s.t.Helper()
	var le sql.NullString
	require.NoError(s.t, s.reads.QueryRow(`SELECT state, attempts, last_error FROM `+s.table+` WHERE uuid = `+s.placeholder(1), uuid).
		Scan(&state, &attempts, &le))
	return state, attempts, le.String
}

// check compares what the broker delivered with what was committed,
// records the counts for the summary, and asserts none was lost, none
// delivered that was never committed, none dead but the poison messages,
// and, when ordered, none reordered within its key.
func (s *scenario) check(deliveries []delivery, ordered bool, poison map[string]bool) result {
	s.t.Helper()
	s.resolve()
	s.mu.Lock()
	committed := s.committed
	s.mu.Unlock()

	var r result
	seen := make(map[string]bool, len(deliveries))
	highest := map[string]int{} // per key: highest seq delivered so far
	var unexpected []string
	for _, d := range deliveries {
		if seen[d.uuid] {
			r.duplicates++
			continue
		}
		seen[d.uuid] = true
		if _, ok := committed[d.uuid]; !ok {
			unexpected = append(unexpected, d.uuid)
			continue
		}
		if ordered && d.key != "" {
			if h, ok := highest[d.key]; ok && d.seq < h {
				r.reordered++
				if r.reordered <= 5 {
					s.t.Logf("reordered: key %s seq %d delivered after seq %d", d.key, d.seq, h)
				}
			} else {
				highest[d.key] = d.seq
			}
		}
	}
	var lostSample []string
	for uuid, ev := range committed {
		if poison[uuid] {
			continue
		}
		r.committed++
		if seen[uuid] {
			r.received++
			continue
		}
		r.lost++
		if len(lostSample) < 5 {
			lostSample = append(lostSample, fmt.Sprintf("%s (key %q seq %d)", uuid, ev.key, ev.seq))
		}
	}
	dead := s.deadRows()
	for uuid, lastErr := range dead {
		if !poison[uuid] {
			r.deadWrongly++
			if r.deadWrongly <= 5 {
				s.t.Logf("dead wrongly: %s: %s", uuid, lastErr)
			}
		}
	}
	record(s.t, r)

	require.Zero(s.t, r.lost, "committed events never delivered, e.g. %v", lostSample)
	require.Empty(s.t, unexpected, "delivered but never committed")
	require.Zero(s.t, r.deadWrongly, "rows dead that are not poison")
	if ordered {
		require.Zero(s.t, r.reordered, "per-key reorderings")
	}
	return r
}

// charged counts rows, poison excluded, that were charged a failed attempt.
func (s *scenario) charged(poison map[string]bool) int {
	s.t.Helper()
	rows, err := s.reads.Query(`SELECT uuid FROM ` + s.table + ` WHERE attempts > 0`)
	require.NoError(s.t, err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var uuid string
		require.NoError(s.t, rows.Scan(&uuid))
		if !poison[uuid] {
			n++
		}
	}
	require.NoError(s.t, rows.Err())
	return n
}
