package forwarder_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// recorder is a destination publisher that records what it accepted and can
// be told to fail.
type recorder struct {
	mu       sync.Mutex
	got      []received
	byUUID   map[string]int
	failWith func(topic string, msg *message.Message) error
	arrived  chan struct{} // signalled on every accepted message
}

type received struct {
	topic string
	msg   *message.Message
}

func newRecorder() *recorder {
	return &recorder{byUUID: make(map[string]int), arrived: make(chan struct{}, 1)}
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		r.mu.Lock()
		fail := r.failWith
		r.mu.Unlock()
		if fail != nil {
			if err := fail(topic, m); err != nil {
				return err
			}
		}
		r.mu.Lock()
		r.got = append(r.got, received{topic, m})
		r.byUUID[m.UUID]++
		r.mu.Unlock()
		select {
		case r.arrived <- struct{}{}:
		default:
		}
	}
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) setFail(f func(topic string, msg *message.Message) error) {
	r.mu.Lock()
	r.failWith = f
	r.mu.Unlock()
}

// count returns how often the message was accepted.
func (r *recorder) count(uuid string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byUUID[uuid]
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byUUID)
}

func (r *recorder) snapshot() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// waitDistinct waits until n distinct UUIDs arrived.
func (r *recorder) waitDistinct(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for r.distinct() < n {
		select {
		case <-r.arrived:
		case <-deadline:
			t.Fatalf("received %d distinct messages, want %d", r.distinct(), n)
		}
	}
}

func runForwarder(t *testing.T, store relaystore.Store, dest message.Publisher, cfg forwarder.Config) *forwarder.Forwarder {
	t.Helper()
	f, err := forwarder.NewForwarder(store, dest, cfg, watermill.NopLogger{})
	require.NoError(t, err)
	testenv.Start(t, "forwarder", f)
	return f
}

func TestForwarderDeliversIntact(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		dest := newRecorder()
		msgs := e.publish(t, "orders", 300, func(i int) string { return fmt.Sprint("k", i%7) })
		more := e.publish(t, "payments", 50, nil)
		runForwarder(t, e.store, dest, forwarder.Config{})
		dest.waitDistinct(t, 350, 30*time.Second)

		want := make(map[string]*message.Message)
		for _, m := range append(msgs, more...) {
			want[m.UUID] = m
		}
		for _, r := range dest.snapshot() {
			w := want[r.msg.UUID]
			require.NotNil(t, w)
			require.Equal(t, w.Payload, r.msg.Payload)
			require.Equal(t, w.Metadata, r.msg.Metadata, "metadata intact, relay keys removed")
			if w.Metadata.Get(outbox.PartitionKeyMetadataKey) != "" {
				require.Equal(t, "orders", r.topic)
			}
		}
		waitFor(t, 10*time.Second, "acked rows deleted", func() bool { return e.count(t, "1=1") == 0 })
	})
}

func TestForwarderRetriesThenDeadLetters(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		dest := newRecorder()
		msgs := e.publish(t, "t", 20, nil)
		poison, permanent := msgs[3].UUID, msgs[7].UUID
		var attempts sync.Map
		dest.setFail(func(_ string, m *message.Message) error {
			switch m.UUID {
			case poison:
				n, _ := attempts.LoadOrStore(m.UUID, new(int))
				*n.(*int)++
				return errors.New("broker said no")
			case permanent:
				return retry.PermanentError(errors.New("message too large"))
			}
			return nil
		})
		cfg := fastConfig()
		cfg.MaxRetryCount = 3
		runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
		dest.waitDistinct(t, 18, 30*time.Second)

		waitFor(t, 30*time.Second, "poison message dead", func() bool {
			r, ok := e.row(t, poison)
			return ok && r.State == "dead"
		})
		r, _ := e.row(t, poison)
		require.Equal(t, 3, r.Attempts, "attempt count lives in the row")
		require.Contains(t, r.LastError.String, "broker said no")
		require.False(t, r.Claimed)

		waitFor(t, 10*time.Second, "permanent failure dead", func() bool {
			r, ok := e.row(t, permanent)
			return ok && r.State == "dead"
		})
		r, _ = e.row(t, permanent)
		require.Equal(t, 1, r.Attempts, "a permanent error dead-letters at once")
		require.Contains(t, r.LastError.String, "message too large")

		// Requeue gives the dead row a fresh budget; it is delivered once the
		// destination accepts it.
		dest.setFail(nil)
		dead, err := e.store.ListDead(context.Background(), outbox.DeadQuery{Limit: 10})
		require.NoError(t, err)
		require.Len(t, dead, 2)
		n, err := e.store.Requeue(context.Background(), dead[0].ID, dead[1].ID)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		dest.waitDistinct(t, 20, 30*time.Second)
	})
}

func TestForwarderUnavailableDestinationChargesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		dest := newRecorder()
		down := make(chan struct{})
		failures := make(chan struct{}, 100)
		dest.setFail(func(string, *message.Message) error {
			select {
			case <-down:
				return nil
			default:
				select {
				case failures <- struct{}{}:
				default:
				}
				return retry.UnavailableError(errors.New("connection refused"))
			}
		})
		msgs := e.publish(t, "t", 5, nil)
		cfg := fastConfig()
		cfg.MaxRetryCount = 1
		runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
		for i := 0; i < 5; i++ { // fail well past the budget of 1
			select {
			case <-failures:
			case <-time.After(30 * time.Second):
				t.Fatal("destination not tried")
			}
		}
		for _, m := range msgs {
			r, ok := e.row(t, m.UUID)
			require.True(t, ok)
			require.Equal(t, "pending", r.State)
			require.Zero(t, r.Attempts)
		}
		close(down)
		dest.waitDistinct(t, 5, 60*time.Second)
	})
}

// TestForwarderPerKeyOrderAcrossInstances runs three relays on one table;
// every key's messages must reach the destination in the order written.
func TestForwarderPerKeyOrderAcrossInstances(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		dest := newRecorder()
		const n, keys = 1500, 40
		// Every key fails on its first delivery once, which must hold back only
		// that key until the retry succeeds.
		var failed sync.Map
		dest.setFail(func(_ string, m *message.Message) error {
			if m.Metadata.Get("seq") == "0" || m.Metadata.Get("seq") == "700" {
				if _, again := failed.LoadOrStore(m.UUID, true); !again {
					return errors.New("first try fails")
				}
			}
			return nil
		})
		cfg := fastConfig()
		cfg.BatchSize = 37
		for i := 0; i < 3; i++ {
			runForwarder(t, e.with(t, cfg), dest, forwarder.Config{HandlerName: fmt.Sprint("relay", i)})
		}
		msgs := e.publish(t, "ordered", n, func(i int) string { return fmt.Sprint("key-", i%keys) })
		dest.waitDistinct(t, n, 60*time.Second)

		seqOf := make(map[string]int)
		for i, m := range msgs {
			seqOf[m.UUID] = i
		}
		last := make(map[string]int)
		for _, r := range dest.snapshot() {
			key := r.msg.Metadata.Get(outbox.PartitionKeyMetadataKey)
			seq := seqOf[r.msg.UUID]
			prev, seen := last[key]
			require.False(t, seen && seq <= prev, "key %s: message %d after %d", key, seq, prev)
			last[key] = seq
		}
	})
}

func TestSubscriberCloseReleasesClaims(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		e.publish(t, "t", 10, nil)
		sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{}, nil)
		require.NoError(t, err)
		ch, err := sub.Subscribe(context.Background(), "t")
		require.NoError(t, err)
		var first *message.Message
		select {
		case first = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no message")
		}
		waitFor(t, 10*time.Second, "rows claimed", func() bool { return e.count(t, "claim_token IS NOT NULL") > 0 })
		require.NoError(t, sub.Close())
		require.NoError(t, sub.Close(), "idempotent")
		first.Ack() // too late: the claim was released, the ack is not recorded
		_, err = sub.Subscribe(context.Background(), "t")
		require.ErrorIs(t, err, outbox.ErrClosed)

		require.Equal(t, 10, e.count(t, "state = 'pending'"), "nothing acked before Close is marked published")
		require.Zero(t, e.count(t, "claim_token IS NOT NULL"), "every claim released")
	})
}

func TestSubscriberCloseBeforeSubscribe(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{}, nil)
		require.NoError(t, err)
		require.NoError(t, sub.Close())
	})
}

func TestForwarderLifecycle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		f, err := forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{}, nil)
		require.NoError(t, err)
		require.NoError(t, f.Close(), "safe before Run")
		require.NoError(t, f.Close(), "idempotent")
		require.ErrorIs(t, f.Run(context.Background()), outbox.ErrClosed)

		f = runForwarder(t, e.store, newRecorder(), forwarder.Config{})
		require.ErrorIs(t, f.Run(context.Background()), forwarder.ErrRunning)

		router, err := message.NewRouter(message.RouterConfig{}, nil)
		require.NoError(t, err)
		attached, err := forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{Router: router}, nil)
		require.NoError(t, err)
		require.ErrorIs(t, attached.Run(context.Background()), forwarder.ErrAttached)
		require.NoError(t, attached.Close())
	})
}

func TestForwarderOnCallersRouter(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		router, err := message.NewRouter(message.RouterConfig{}, nil)
		require.NoError(t, err)
		var seen sync.Map
		router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				seen.Store(msg.UUID, true)
				return h(msg)
			}
		})
		dest := newRecorder()
		_, err = forwarder.NewForwarder(e.store, dest, forwarder.Config{Router: router}, nil)
		require.NoError(t, err)
		msgs := e.publish(t, "t", 10, nil)
		done := make(chan error, 1)
		go func() { done <- router.Run(context.Background()) }()
		dest.waitDistinct(t, 10, 30*time.Second)
		require.NoError(t, router.Close())
		require.NoError(t, <-done)
		for _, m := range msgs {
			_, ok := seen.Load(m.UUID)
			require.True(t, ok, "the caller's middleware ran")
		}
	})
}

func TestInvalidForwarderConfig(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		_, err := forwarder.NewForwarder(e.store, nil, forwarder.Config{}, nil)
		require.ErrorContains(t, err, "destination")
		_, err = forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{QuickRetries: -1}, nil)
		require.ErrorContains(t, err, "QuickRetries")
		cfg := fastConfig()
		cfg.BatchSize = -1
		_, err = forwarder.NewForwarder(configured{Store: e.store, cfg: cfg}, newRecorder(), forwarder.Config{}, nil)
		require.ErrorContains(t, err, "BatchSize")
		_, err = forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{Topics: []string{"a*b"}}, nil)
		require.ErrorContains(t, err, "Topics")
		_, err = forwarder.NewSubscriber(nil, forwarder.SubscriberConfig{}, nil)
		require.Error(t, err)
	})
}

// TestForwarderSteadyStateManyInstances: three relays, 10,000 messages over
// 200 keys: all delivered, none twice, every key in order.
func TestForwarderSteadyStateManyInstances(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		n, keys := 10000, 200
		if e.backend.dialect == outbox.SQLite && raceEnabled {
			n = 2000
		}
		dest := newRecorder()
		msgs := e.publish(t, "steady", n, func(i int) string { return fmt.Sprint("key-", i%keys) })
		for i := 0; i < 3; i++ {
			runForwarder(t, e.store, dest, forwarder.Config{})
		}
		dest.waitDistinct(t, n, 120*time.Second)

		seqOf := make(map[string]int, n)
		for i, m := range msgs {
			seqOf[m.UUID] = i
		}
		got := dest.snapshot()
		require.Len(t, got, n, "no message delivered twice")
		last := make(map[string]int)
		for _, r := range got {
			key := r.msg.Metadata.Get(outbox.PartitionKeyMetadataKey)
			seq := seqOf[r.msg.UUID]
			if prev, ok := last[key]; ok {
				require.Greater(t, seq, prev, "key %s out of order", key)
			}
			last[key] = seq
		}
	})
}

func TestForwarderDeliversAfterNFailures(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		const failures = 3
		dest := newRecorder()
		tries := 0
		dest.setFail(func(string, *message.Message) error {
			tries++ // one message, one relay: calls are sequential
			if tries <= failures {
				return errors.New("not yet")
			}
			return nil
		})
		msgs := e.publish(t, "t", 1, nil)
		cfg := fastConfig()
		cfg.MaxRetryCount = failures + 1
		runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
		dest.waitDistinct(t, 1, 30*time.Second)
		require.Equal(t, failures+1, tries)
		waitFor(t, 10*time.Second, "row deleted", func() bool { _, ok := e.row(t, msgs[0].UUID); return !ok })
	})
}

// TestForwarderCloseMidFlightThenRestart: closing while messages are being
// published marks nothing published that was not acked; a new relay
// delivers the rest.
func TestForwarderCloseMidFlightThenRestart(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		const n = 200
		msgs := e.publish(t, "t", n, nil)
		dest := newRecorder()
		blocked := make(chan struct{})
		entered := make(chan struct{}, n)
		dest.setFail(func(string, *message.Message) error {
			entered <- struct{}{}
			<-blocked // the broker hangs: nothing gets confirmed
			return errors.New("broker gone")
		})
		f, err := forwarder.NewForwarder(e.store, dest, forwarder.Config{}, nil)
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- f.Run(context.Background()) }()
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("nothing in flight")
		}
		closed := make(chan error, 1)
		go func() { closed <- f.Close() }()
		// The grace passes with the broker still hanging; then it fails.
		select {
		case err := <-closed:
			t.Fatalf("Close returned before in-flight handlers ended: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(blocked)
		require.NoError(t, <-closed)
		require.NoError(t, <-done)
		require.Equal(t, n, e.count(t, "state = 'pending'"), "nothing unacked was marked published")
		require.Zero(t, e.count(t, "claim_token IS NOT NULL"), "claims released")
		require.Zero(t, dest.distinct())

		dest.setFail(nil)
		runForwarder(t, e.store, dest, forwarder.Config{})
		dest.waitDistinct(t, n, 60*time.Second)
		for _, m := range msgs {
			require.Equal(t, 1, dest.byUUID[m.UUID])
		}
	})
}

func TestForwarderRetention(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		dest := newRecorder()
		e.publish(t, "t", 50, nil)
		cfg := fastConfig()
		cfg.PublishedRetention = time.Hour
		f := runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
		dest.waitDistinct(t, 50, 30*time.Second)
		waitFor(t, 10*time.Second, "rows kept as published", func() bool { return e.count(t, "state = 'published'") == 50 })
		require.NoError(t, f.Close())

		cfg.PublishedRetention = 50 * time.Millisecond
		runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
		waitFor(t, 30*time.Second, "published rows purged", func() bool { return e.count(t, "1=1") == 0 })
	})
}
