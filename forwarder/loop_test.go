package forwarder_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// The subscription loop without a database: fakeStore hands every call of
// the loop to the test, which answers it. No test sleeps; each waits on a
// channel with a timeout.

type op string

const (
	opClaim     op = "claim"
	opPublished op = "published"
	opFailure   op = "failure"
	opDead      op = "dead"
	opRenew     op = "renew"
	opRelease   op = "release"
)

type call struct {
	op        op
	req       relaystore.ClaimRequest
	token     string
	ids       []int64
	delay     time.Duration
	lastError string
	reply     chan reply
}

type reply struct {
	rows []relaystore.Row
	n    int
	err  error
}

type fakeStore struct {
	cfg     config.Config
	calls   chan call
	done    chan struct{}
	waiting []call // calls next took that the test has not asked for yet
}

func newFakeStore(t *testing.T, cfg config.Config) *fakeStore {
	s := &fakeStore{cfg: cfg, calls: make(chan call), done: make(chan struct{})}
	t.Cleanup(func() { close(s.done) })
	return s
}

func (s *fakeStore) do(c call) reply {
	c.reply = make(chan reply, 1)
	select {
	case s.calls <- c:
	case <-s.done:
		return reply{err: errors.New("test over")}
	}
	select {
	case r := <-c.reply:
		return r
	case <-s.done:
		return reply{err: errors.New("test over")}
	}
}

func (s *fakeStore) Config() config.Config { return s.cfg }

func (s *fakeStore) Claim(_ context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	r := s.do(call{op: opClaim, req: req})
	return relaystore.Claimed{Token: "token", Rows: r.rows}, r.err
}

func (s *fakeStore) MarkPublished(_ context.Context, token string, ids []int64, _ bool) (int, error) {
	r := s.do(call{op: opPublished, token: token, ids: ids})
	return r.n, r.err
}

func (s *fakeStore) RecordFailure(_ context.Context, token string, id int64, lastError string, delay time.Duration) (int, error) {
	r := s.do(call{op: opFailure, token: token, ids: []int64{id}, lastError: lastError, delay: delay})
	return r.n, r.err
}

func (s *fakeStore) MarkDead(_ context.Context, token string, id int64, lastError string) (int, error) {
	r := s.do(call{op: opDead, token: token, ids: []int64{id}, lastError: lastError})
	return r.n, r.err
}

func (s *fakeStore) Renew(_ context.Context, token string, ids []int64, _ time.Duration) (int, error) {
	r := s.do(call{op: opRenew, token: token, ids: ids})
	return r.n, r.err
}

func (s *fakeStore) Release(_ context.Context, token string, ids []int64) (int, error) {
	r := s.do(call{op: opRelease, token: token, ids: ids})
	return r.n, r.err
}

func (s *fakeStore) PurgePublished(context.Context, time.Duration, int) (int, error) { return 0, nil }

func (s *fakeStore) Maintain(context.Context) error { return nil }

func (s *fakeStore) Listen(context.Context, func()) error { return relaystore.ErrNoWakeUps }

// next returns the loop's next call of kind want. The workers run
// concurrently, so calls of other kinds may come first: they wait,
// unanswered, for a later next.
func (s *fakeStore) next(t *testing.T, want op) call {
	t.Helper()
	for i, c := range s.waiting {
		if c.op == want {
			s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
			return c
		}
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c := <-s.calls:
			if c.op == want {
				return c
			}
			s.waiting = append(s.waiting, c)
		case <-timeout:
			t.Fatalf("no %s call", want)
		}
	}
}

func (c call) answer(r reply) { c.reply <- r }

// answerRest answers the waiting calls and every later one with "done,
// all rows", until the test ends.
func (s *fakeStore) answerRest() {
	for _, c := range s.waiting {
		c.reply <- reply{n: len(c.ids)}
	}
	s.waiting = nil
	go func() {
		for {
			select {
			case c := <-s.calls:
				c.reply <- reply{n: len(c.ids)}
			case <-s.done:
				return
			}
		}
	}()
}

// loopConfig: polling and lease long enough not to act on their own.
func loopConfig() config.Config {
	return config.Config{PollingInterval: time.Hour, ClaimTimeout: time.Hour, BatchSize: 10, MaxInFlight: 100}
}

func rows(ids ...int64) []relaystore.Row {
	out := make([]relaystore.Row, len(ids))
	for i, id := range ids {
		out[i] = relaystore.Row{ID: id, UUID: "uuid-" + strconv.FormatInt(id, 10), Topic: "t", Payload: []byte("x")}
	}
	return out
}

func keyed(key string, ids ...int64) []relaystore.Row {
	out := rows(ids...)
	for i := range out {
		out[i].PartitionKey = key
	}
	return out
}

func subscribe(t *testing.T, s *fakeStore) (*forwarder.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := forwarder.NewSubscriber(s, forwarder.SubscriberConfig{}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { go func() { _ = sub.Close() }() })
	ch, err := sub.Subscribe(context.Background(), forwarder.AllTopics)
	require.NoError(t, err)
	return sub, ch
}

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "channel closed")
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return nil
	}
}

func requireNothingReady(t *testing.T, ch <-chan *message.Message) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("message %s emitted out of turn", m.UUID)
	default:
	}
}

func outboxID(m *message.Message) int64 {
	id, _ := strconv.ParseInt(m.Metadata.Get(outbox.OutboxIDMetadataKey), 10, 64)
	return id
}

// TestLoopClaimSchedule: a claim at start; with an hour-long poll, the
// next only on a wake-up, plus one re-check after it; a failed claim is
// tried again after the database backoff; a full claim (a backlog) is
// followed at once by one as large as the window has room for.
func TestLoopClaimSchedule(t *testing.T) {
	t.Parallel()
	s := newFakeStore(t, loopConfig())
	sub, _ := subscribe(t, s)

	first := s.next(t, opClaim)
	require.Equal(t, 1, first.req.Limit, "no row seen yet: one, as MaxInFlightBytes wants")
	require.True(t, first.req.Ordered)
	first.answer(reply{})

	sub.Wake()
	s.next(t, opClaim).answer(reply{})
	s.next(t, opClaim).answer(reply{}) // the re-check, NotifyInterval after the wake-up

	sub.Wake()
	s.next(t, opClaim).answer(reply{err: errors.New("database down")})
	s.next(t, opClaim).answer(reply{rows: rows(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)}) // the retry; full
	backlog := s.next(t, opClaim)
	require.Equal(t, 90, backlog.req.Limit, "a backlog: what the window has room for")
	backlog.answer(reply{})

	sub.Wake()
	idle := s.next(t, opClaim)
	require.Equal(t, 10, idle.req.Limit, "no backlog, rows seen: BatchSize")
	idle.answer(reply{})
}

// TestLoopOrderingChains: one row of a key at a time, the next only after
// the previous was acked; other keys and keyless rows go beside it.
func TestLoopOrderingChains(t *testing.T) {
	t.Parallel()
	s := newFakeStore(t, loopConfig())
	_, ch := subscribe(t, s)
	claimed := append(append(keyed("k", 1, 2, 3), keyed("j", 4)...), rows(5)...)
	s.next(t, opClaim).answer(reply{rows: claimed})

	first := map[int64]*message.Message{}
	for range 3 {
		m := receive(t, ch)
		first[outboxID(m)] = m
	}
	require.Contains(t, first, int64(1))
	require.Contains(t, first, int64(4))
	require.Contains(t, first, int64(5))
	requireNothingReady(t, ch)

	first[1].Ack()
	m := receive(t, ch)
	require.Equal(t, int64(2), outboxID(m), "k's next row, after its first was acked")
	requireNothingReady(t, ch)
	m.Ack()
	require.Equal(t, int64(3), outboxID(receive(t, ch)))
	ack := s.next(t, opPublished)
	require.Subset(t, []int64{1, 2}, ack.ids)
	ack.answer(reply{n: len(ack.ids)})
}

// TestLoopNackReleasesRowsBehind: a nacked row is charged and delayed; the
// rows of its key queued behind it are given back at once, uncharged.
func TestLoopNackReleasesRowsBehind(t *testing.T) {
	t.Parallel()
	cfg := loopConfig()
	cfg.RetryBackoffMin, cfg.RetryBackoffMax = time.Minute, time.Minute
	s := newFakeStore(t, cfg)
	_, ch := subscribe(t, s)
	s.next(t, opClaim).answer(reply{rows: keyed("k", 1, 2, 3)})

	m := receive(t, ch)
	require.Equal(t, int64(1), outboxID(m))
	m.Nack()
	failure := s.next(t, opFailure)
	require.Equal(t, []int64{1}, failure.ids)
	require.Contains(t, failure.lastError, "nacked by the handler")
	require.GreaterOrEqual(t, failure.delay, 30*time.Second, "backoff from RetryBackoffMin")
	failure.answer(reply{n: 1})
	released := s.next(t, opRelease)
	require.Equal(t, []int64{2, 3}, released.ids, "they must not overtake row 1")
	released.answer(reply{n: 2})
	requireNothingReady(t, ch)
}

// TestLoopBudgetEndsDead: the retry budget is spent in the row: a nack of
// the last attempt makes it dead, with the budget named.
func TestLoopBudgetEndsDead(t *testing.T) {
	t.Parallel()
	cfg := loopConfig()
	cfg.MaxRetryCount = 3
	s := newFakeStore(t, cfg)
	_, ch := subscribe(t, s)
	last := rows(1)
	last[0].Attempts = 2
	s.next(t, opClaim).answer(reply{rows: last})
	m := receive(t, ch)
	require.Equal(t, "3", m.Metadata.Get(outbox.AttemptMetadataKey))
	m.Nack()
	d := s.next(t, opDead)
	require.Contains(t, d.lastError, "retry budget of 3 attempts exhausted")
	d.answer(reply{n: 1})
}

// TestLoopRenewsLeases: rows held past half the lease get it renewed.
func TestLoopRenewsLeases(t *testing.T) {
	t.Parallel()
	cfg := loopConfig()
	cfg.ClaimTimeout = time.Second
	s := newFakeStore(t, cfg)
	_, ch := subscribe(t, s)
	s.next(t, opClaim).answer(reply{rows: rows(1, 2)})
	receive(t, ch)
	receive(t, ch) // held, never acked
	renew := s.next(t, opRenew)
	require.ElementsMatch(t, []int64{1, 2}, renew.ids)
	renew.answer(reply{n: 2})
}

// TestLoopShutdownWithAckInFlight: Close while an ack write is in flight
// and a message is still in the handler: the loop drains in the same
// loop — the ack is written, a late ack in the grace is written too, and
// the row still unacked after the grace is released, never marked
// published.
func TestLoopShutdownWithAckInFlight(t *testing.T) {
	t.Parallel()
	cfg := loopConfig()
	cfg.ClaimTimeout = time.Second // a grace of half a second
	s := newFakeStore(t, cfg)
	sub, ch := subscribe(t, s)
	s.next(t, opClaim).answer(reply{rows: rows(1, 2, 3)})
	msgs := map[int64]*message.Message{}
	for range 3 {
		m := receive(t, ch)
		msgs[outboxID(m)] = m
	}
	msgs[1].Ack()
	inFlight := s.next(t, opPublished)
	require.Equal(t, []int64{1}, inFlight.ids)

	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case _, ok := <-ch:
		require.False(t, ok, "the channel closes first")
	case <-time.After(10 * time.Second):
		t.Fatal("channel not closed")
	}
	msgs[2].Ack() // within the grace
	inFlight.answer(reply{n: 1})
	late := s.next(t, opPublished)
	require.Equal(t, []int64{2}, late.ids)
	late.answer(reply{n: 1})
	released := s.next(t, opRelease)
	require.Equal(t, []int64{3}, released.ids, "only the row still in the handler")
	released.answer(reply{n: 1})
	s.answerRest() // a lease renewal may be under way
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestLoopAckWritesBackOff: a failing ack write is retried with the one
// database backoff (50ms doubling), not every 50ms, and logged at error
// level once, however long it fails; its recovery is logged once.
func TestLoopAckWritesBackOff(t *testing.T) {
	t.Parallel()
	s := newFakeStore(t, loopConfig())
	logger := newLogs()
	sub, err := forwarder.NewSubscriber(s, forwarder.SubscriberConfig{}, logger)
	require.NoError(t, err)
	t.Cleanup(func() { go func() { _ = sub.Close() }() })
	ch, err := sub.Subscribe(context.Background(), forwarder.AllTopics)
	require.NoError(t, err)
	s.next(t, opClaim).answer(reply{rows: rows(1)})
	receive(t, ch).Ack()

	var at []time.Time
	for range 6 {
		c := s.next(t, opPublished)
		at = append(at, time.Now())
		c.answer(reply{err: errors.New("database down")})
	}
	c := s.next(t, opPublished)
	c.answer(reply{n: 1})
	require.Greater(t, at[5].Sub(at[4]), at[1].Sub(at[0]), "the pauses grow")
	require.GreaterOrEqual(t, at[5].Sub(at[4]), 200*time.Millisecond, "the fifth pause is at least 400ms/2")

	waitLogs := func(substr string, n int) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for countLogs(logger, substr) < n {
			select {
			case <-deadline:
				t.Fatalf("%q logged %d times, want %d", substr, countLogs(logger, substr), n)
			case <-tick.C:
			}
		}
	}
	waitLogs("works again", 1)
	errs := logger.at(watermill.ErrorLogLevel)
	require.Len(t, errs, 1, "one error-level line for six failures")
	require.Contains(t, errs[0].msg, "ack write failed")
}

// TestLoopBoundsInFlightBytes: a relay starting on a backlog of large
// messages claims one row first, to learn their size; of a claim larger
// than MaxInFlightBytes it keeps what fits (always one row) and gives the
// rest back at once, uncharged; it claims again only when acks made room,
// as many rows as fit.
func TestLoopBoundsInFlightBytes(t *testing.T) {
	t.Parallel()
	cfg := loopConfig()
	cfg.MaxInFlightBytes = 64
	s := newFakeStore(t, cfg)
	_, ch := subscribe(t, s)
	big := func(ids ...int64) []relaystore.Row {
		out := rows(ids...)
		for i := range out {
			out[i].Payload = []byte("8 bytes!")
		}
		return out
	}

	first := s.next(t, opClaim)
	require.Equal(t, 1, first.req.Limit, "nothing learnt about row sizes yet")
	var all []int64
	for id := int64(1); id <= 30; id++ {
		all = append(all, id)
	}
	first.answer(reply{rows: big(all...)}) // a store that took more than asked
	released := s.next(t, opRelease)
	require.Equal(t, all[8:], released.ids, "64 bytes held, the rest given back")
	released.answer(reply{n: len(released.ids)})

	var got []*message.Message
	for range 8 {
		got = append(got, receive(t, ch))
	}
	requireNothingReady(t, ch)
	// Half the window's capacity (8 rows of 8 bytes) freed: a claim.
	for _, m := range got[:4] {
		m.Ack()
	}
	for acked := 0; acked < 4; {
		ack := s.next(t, opPublished)
		ack.answer(reply{n: len(ack.ids)})
		acked += len(ack.ids)
	}
	next := s.next(t, opClaim)
	require.Equal(t, 4, next.req.Limit, "as many rows as the acks made room for")
	next.answer(reply{})
	for _, m := range got[4:] {
		m.Ack()
	}
	s.answerRest()
}
