package relayretry_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/relayretry"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// testTimeout bounds every wait; tests never sleep to let things happen.
const testTimeout = 10 * time.Second

// fastConfig has tiny delays so retries finish at once.
func fastConfig() relayretry.MiddlewareConfig {
	return relayretry.MiddlewareConfig{
		QuickRetryDelay:   time.Millisecond,
		CircuitMinBackoff: time.Millisecond,
		CircuitMaxBackoff: 2 * time.Millisecond,
	}
}

func newMiddleware(t *testing.T, cfg relayretry.MiddlewareConfig, logger watermill.LoggerAdapter) *relayretry.Middleware {
	t.Helper()
	m, err := relayretry.NewMiddleware(cfg, logger)
	require.NoError(t, err)
	return m
}

// newMessage returns a message as the relay's subscriber emits it, with the
// relay metadata. An empty attempt leaves the attempt metadata out.
func newMessage(ctx context.Context, attempt string) *message.Message {
	msg := message.NewMessage("uuid-1", []byte("payload"))
	msg.Metadata.Set(outbox.OutboxIDMetadataKey, "42")
	if attempt != "" {
		msg.Metadata.Set(outbox.AttemptMetadataKey, attempt)
	}
	msg.SetContext(ctx)
	return msg
}

// script returns a handler failing with errs in turn, then succeeding, and
// its call counter.
func script(errs ...error) (message.HandlerFunc, *atomic.Int32) {
	var calls atomic.Int32
	return func(*message.Message) ([]*message.Message, error) {
		n := int(calls.Add(1))
		if n <= len(errs) {
			return nil, errs[n-1]
		}
		return nil, nil
	}, &calls
}

// always returns a handler always failing with err.
func always(err error) (message.HandlerFunc, *atomic.Int32) {
	var calls atomic.Int32
	return func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, err
	}, &calls
}

type result struct {
	msgs []*message.Message
	kind retry.Kind
	err  error
}

// start runs h on msg through the middleware's Handle in a goroutine.
func start(m *relayretry.Middleware, h message.HandlerFunc, msg *message.Message) <-chan result {
	done := make(chan result, 1)
	go func() {
		msgs, kind, err := m.Handle(h, msg)
		done <- result{msgs, kind, err}
	}()
	return done
}

// run runs h on msg through the middleware and returns the verdict.
func run(t *testing.T, m *relayretry.Middleware, h message.HandlerFunc, msg *message.Message) result {
	t.Helper()
	return await(t, start(m, h, msg))
}

func await(t *testing.T, done <-chan result) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(testTimeout):
		t.Fatal("handler did not return")
		return result{}
	}
}

func paused(m *relayretry.Middleware) bool {
	p, _ := m.Paused()
	return p
}

func TestMiddlewareSuccess(t *testing.T) {
	t.Parallel()

	produced := []*message.Message{message.NewMessage("out", nil)}
	m := newMiddleware(t, fastConfig(), nil)
	r := run(t, m, func(*message.Message) ([]*message.Message, error) { return produced, nil }, newMessage(context.Background(), "1"))
	require.NoError(t, r.err)
	require.Zero(t, r.kind)
	require.Equal(t, produced, r.msgs)
	require.False(t, paused(m))

	// As a plain router middleware, the same.
	msgs, err := m.Middleware(func(*message.Message) ([]*message.Message, error) { return produced, nil })(newMessage(context.Background(), "1"))
	require.NoError(t, err)
	require.Equal(t, produced, msgs)
}

func TestMiddlewarePermanent(t *testing.T) {
	t.Parallel()

	logger := watermill.NewCaptureLogger()
	m := newMiddleware(t, fastConfig(), logger)
	cause := errors.New("message too large")
	h, calls := always(retry.PermanentError(cause))

	r := run(t, m, h, newMessage(context.Background(), "1"))
	require.ErrorIs(t, r.err, cause)
	require.Equal(t, retry.Permanent, r.kind)
	require.EqualValues(t, 1, calls.Load(), "a Permanent failure is not retried")
	require.Empty(t, logger.Captured()[watermill.ErrorLogLevel], "the subscriber logs the dead row, once")
}

// TestMiddlewareTransient: a Transient failure is returned as such whatever
// the attempt: the retry budget is the subscriber's to spend, in one place.
func TestMiddlewareTransient(t *testing.T) {
	t.Parallel()

	cause := errors.New("flaky")
	for _, attempt := range []string{"1", "5", "9", "", "x"} {
		m := newMiddleware(t, fastConfig(), nil)
		h, calls := always(cause)
		r := run(t, m, h, newMessage(context.Background(), attempt))
		require.Same(t, cause, r.err, "attempt %q", attempt)
		require.Equal(t, retry.Transient, r.kind, "attempt %q", attempt)
		require.EqualValues(t, 1, calls.Load(), "no quick retries by default")
	}
}

func TestMiddlewareQuickRetries(t *testing.T) {
	t.Parallel()

	t.Run("recovers", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 2
		m := newMiddleware(t, cfg, nil)
		h, calls := script(errors.New("flaky 1"), errors.New("flaky 2"))

		r := run(t, m, h, newMessage(context.Background(), "1"))
		require.NoError(t, r.err)
		require.Zero(t, r.kind)
		require.EqualValues(t, 3, calls.Load())
	})

	t.Run("exhausted", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 2
		m := newMiddleware(t, cfg, nil)
		cause := errors.New("flaky")
		h, calls := always(cause)

		r := run(t, m, h, newMessage(context.Background(), "1"))
		require.Same(t, cause, r.err)
		require.Equal(t, retry.Transient, r.kind)
		require.EqualValues(t, 3, calls.Load())
	})

	t.Run("not for Permanent", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 2
		m := newMiddleware(t, cfg, nil)
		h, calls := always(retry.PermanentError(errors.New("bad")))

		r := run(t, m, h, newMessage(context.Background(), "1"))
		require.Equal(t, retry.Permanent, r.kind)
		require.EqualValues(t, 1, calls.Load())
	})

	t.Run("stop within half the lease", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 5
		cfg.Lease = time.Nanosecond // half of it has passed before the first retry
		m := newMiddleware(t, cfg, nil)
		h, calls := always(errors.New("flaky"))

		r := run(t, m, h, newMessage(context.Background(), "1"))
		require.Equal(t, retry.Transient, r.kind)
		require.EqualValues(t, 1, calls.Load())
	})

	t.Run("stop when the context ends", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 5
		cfg.QuickRetryDelay = time.Hour
		m := newMiddleware(t, cfg, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cause := errors.New("flaky")
		var calls atomic.Int32
		h := func(*message.Message) ([]*message.Message, error) {
			calls.Add(1)
			cancel()
			return nil, cause
		}

		r := run(t, m, h, newMessage(ctx, "1"))
		require.Same(t, cause, r.err)
		require.Equal(t, retry.Transient, r.kind, "the attempt was made: it is charged")
		require.EqualValues(t, 1, calls.Load())
	})
}

func TestMiddlewareUnavailable(t *testing.T) {
	t.Parallel()

	t.Run("retried in place until it succeeds", func(t *testing.T) {
		t.Parallel()
		logger := watermill.NewCaptureLogger()
		m := newMiddleware(t, fastConfig(), logger)
		down := retry.UnavailableError(errors.New("broker down"))
		h, calls := script(down, down, down)

		r := run(t, m, h, newMessage(context.Background(), "5"))
		require.NoError(t, r.err)
		require.Zero(t, r.kind)
		require.EqualValues(t, 4, calls.Load())
		require.False(t, paused(m), "a success closes the circuit")

		errs := logger.Captured()[watermill.ErrorLogLevel]
		require.Len(t, errs, 1, "the outage is logged as an error once")
		require.Equal(t, "Destination unavailable, pausing", errs[0].Msg)
		require.Contains(t, errs[0].Fields, "delay")
	})

	t.Run("then another kind", func(t *testing.T) {
		t.Parallel()
		m := newMiddleware(t, fastConfig(), nil)
		cause := errors.New("invalid")
		h, calls := script(retry.UnavailableError(errors.New("down")), retry.PermanentError(cause))

		r := run(t, m, h, newMessage(context.Background(), "1"))
		require.ErrorIs(t, r.err, cause)
		require.Equal(t, retry.Permanent, r.kind)
		require.EqualValues(t, 2, calls.Load())
		require.False(t, paused(m), "the destination answered: the circuit closes")
	})

	t.Run("context ends", func(t *testing.T) {
		t.Parallel()
		m := newMiddleware(t, fastConfig(), nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cause := retry.UnavailableError(errors.New("down"))
		var calls atomic.Int32
		h := func(*message.Message) ([]*message.Message, error) {
			if calls.Add(1) == 2 {
				cancel()
			}
			return nil, cause
		}

		r := run(t, m, h, newMessage(ctx, "5"))
		require.ErrorIs(t, r.err, cause)
		require.Equal(t, retry.Unavailable, r.kind, "released, not charged")
		require.EqualValues(t, 2, calls.Load())
	})
}

// openCircuit opens m's circuit: a message fails Unavailable and its context
// ends, so the middleware returns while the circuit stays open.
func openCircuit(t *testing.T, m *relayretry.Middleware) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := func(*message.Message) ([]*message.Message, error) {
		cancel()
		return nil, retry.UnavailableError(errors.New("down"))
	}
	require.Error(t, run(t, m, h, newMessage(ctx, "1")).err)
	require.True(t, paused(m))
}

func TestMiddlewareCircuitHoldsOtherMessages(t *testing.T) {
	t.Parallel()

	cfg := fastConfig()
	cfg.CircuitMinBackoff, cfg.CircuitMaxBackoff = time.Hour, time.Hour
	m := newMiddleware(t, cfg, nil)
	openCircuit(t, m)
	_, since := m.Paused()
	require.False(t, since.IsZero())

	ctx, cancel := context.WithCancel(context.Background())
	h, calls := script()
	done := start(m, h, newMessage(ctx, "1"))
	cancel()

	r := await(t, done)
	require.ErrorIs(t, r.err, context.Canceled)
	require.Equal(t, retry.Unavailable, r.kind)
	require.Zero(t, calls.Load(), "the handler is not called while the circuit is open")
	require.True(t, paused(m))
}

// TestMiddlewareCircuitProbesOneAtATime: while the destination stays down,
// each pause ends in one probe, not in one call per waiting message; the
// probe's success releases them all.
func TestMiddlewareCircuitProbesOneAtATime(t *testing.T) {
	t.Parallel()

	cfg := fastConfig()
	cfg.CircuitMinBackoff, cfg.CircuitMaxBackoff = 20*time.Millisecond, 20*time.Millisecond
	m := newMiddleware(t, cfg, nil)
	var calls, concurrent, most atomic.Int32
	up := make(chan struct{})
	probes := make(chan struct{}, 100)
	h := func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		select {
		case <-up:
			// Up again: the circuit closes and the waiting calls may
			// overlap; only the calls while down are counted.
			return nil, nil
		default:
		}
		n := concurrent.Add(1)
		defer concurrent.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		probes <- struct{}{}
		return nil, retry.UnavailableError(errors.New("down"))
	}
	openCircuit(t, m)
	var dones []<-chan result
	for range 20 {
		dones = append(dones, start(m, h, newMessage(context.Background(), "1")))
	}
	for range 5 {
		select {
		case <-probes:
		case <-time.After(testTimeout):
			t.Fatal("no probe")
		}
	}
	close(up)
	for _, d := range dones {
		r := await(t, d)
		require.NoError(t, r.err)
	}
	require.EqualValues(t, 1, most.Load(), "one call at a time while the destination is down")
	require.False(t, paused(m))
}

func TestMiddlewareSuccessClosesCircuit(t *testing.T) {
	t.Parallel()

	cfg := fastConfig()
	cfg.CircuitMinBackoff, cfg.CircuitMaxBackoff = time.Hour, time.Hour
	m := newMiddleware(t, cfg, nil)

	// A publish in flight before the outage began...
	entered, release := make(chan struct{}), make(chan struct{})
	inFlightDone := start(m, func(*message.Message) ([]*message.Message, error) {
		close(entered)
		<-release
		return nil, nil
	}, newMessage(context.Background(), "1"))
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("handler not called")
	}

	openCircuit(t, m)

	// ...holds a new message at the circuit until it succeeds.
	h, calls := script()
	waitingDone := start(m, h, newMessage(context.Background(), "1"))

	close(release)
	require.NoError(t, await(t, inFlightDone).err)
	require.NoError(t, await(t, waitingDone).err)
	require.EqualValues(t, 1, calls.Load())
	require.False(t, paused(m))
}

func TestMiddlewareDoneContextIsNotHandled(t *testing.T) {
	t.Parallel()

	m := newMiddleware(t, fastConfig(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h, calls := script()

	r := run(t, m, h, newMessage(ctx, "1"))
	require.ErrorIs(t, r.err, context.Canceled)
	require.Equal(t, retry.Unavailable, r.kind)
	require.Zero(t, calls.Load())
}

func TestMiddlewareClassifier(t *testing.T) {
	t.Parallel()

	cause := errors.New("custom")
	tests := []struct {
		name string
		kind retry.Kind
		want retry.Kind
	}{
		{"permanent", retry.Permanent, retry.Permanent},
		{"invalid kind counts as transient", retry.Kind(0), retry.Transient},
		{"out of range counts as transient", retry.Kind(99), retry.Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			var seen atomic.Pointer[error]
			cfg.Classifier = func(err error) retry.Kind {
				seen.Store(&err)
				return tt.kind
			}
			m := newMiddleware(t, cfg, nil)
			h, _ := always(cause)

			r := run(t, m, h, newMessage(context.Background(), "1"))
			require.ErrorIs(t, r.err, cause)
			require.NotNil(t, seen.Load())
			require.Same(t, cause, *seen.Load())
			require.Equal(t, tt.want, r.kind)
		})
	}
}

func TestNewMiddlewareConfig(t *testing.T) {
	t.Parallel()

	_, err := relayretry.NewMiddleware(relayretry.MiddlewareConfig{}, nil)
	require.NoError(t, err, "the zero config takes the defaults")
	require.NoError(t, relayretry.MiddlewareConfig{}.Validate())

	tests := []struct {
		name  string
		cfg   relayretry.MiddlewareConfig
		field string
	}{
		{"QuickRetries", relayretry.MiddlewareConfig{QuickRetries: -1}, "QuickRetries"},
		{"QuickRetryDelay", relayretry.MiddlewareConfig{QuickRetryDelay: -time.Second}, "QuickRetryDelay"},
		{"Lease", relayretry.MiddlewareConfig{Lease: -time.Second}, "Lease"},
		{"CircuitMinBackoff", relayretry.MiddlewareConfig{CircuitMinBackoff: -time.Second}, "CircuitMinBackoff"},
		{"CircuitMaxBackoff", relayretry.MiddlewareConfig{CircuitMaxBackoff: -time.Second}, "CircuitMaxBackoff"},
		{"min above max", relayretry.MiddlewareConfig{CircuitMinBackoff: time.Minute, CircuitMaxBackoff: time.Second}, "CircuitMinBackoff"},
		{"min above default max", relayretry.MiddlewareConfig{CircuitMinBackoff: time.Hour}, "CircuitMinBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := relayretry.NewMiddleware(tt.cfg, nil)
			require.ErrorContains(t, err, "invalid config: ")
			require.ErrorContains(t, err, tt.field)
		})
	}
}

// OnPause is told once when an outage begins, with its start, and once
// when it ends, however many failed probes lie between.
func TestMiddlewareOnPause(t *testing.T) {
	t.Parallel()
	type change struct {
		paused bool
		since  time.Time
	}
	var changes []change // under the circuit's lock: no mutex needed
	cfg := fastConfig()
	cfg.OnPause = func(paused bool, since time.Time) { changes = append(changes, change{paused, since}) }
	m := newMiddleware(t, cfg, nil)
	down := retry.UnavailableError(errors.New("broker down"))
	h, calls := script(down, down, down)

	r := run(t, m, h, newMessage(context.Background(), "1"))
	require.NoError(t, r.err)
	require.EqualValues(t, 4, calls.Load())
	require.Len(t, changes, 2)
	require.True(t, changes[0].paused)
	require.False(t, changes[0].since.IsZero())
	require.Equal(t, change{paused: false}, changes[1])
}

// TestMiddlewareOwnFailure: a message that always times out while the
// destination answers other messages fails on its own: Transient (charged),
// with its error, and the circuit never opens.
func TestMiddlewareOwnFailure(t *testing.T) {
	t.Parallel()
	var pauses atomic.Int32
	cfg := fastConfig()
	cfg.OnPause = func(paused bool, _ time.Time) {
		if paused {
			pauses.Add(1)
		}
	}
	m := newMiddleware(t, cfg, nil)
	calls, answered := make(chan struct{}), make(chan struct{})
	bad := func(*message.Message) ([]*message.Message, error) {
		calls <- struct{}{}
		<-answered // another message gets through meanwhile
		return nil, fmt.Errorf("publish: %w", context.DeadlineExceeded)
	}
	done := start(m, bad, newMessage(context.Background(), "1"))
	ok, _ := script()
	for n := 0; ; n++ {
		select {
		case <-calls:
		case r := <-done:
			require.Equal(t, retry.Transient, r.kind, "charged: the failure is the message's own")
			require.ErrorIs(t, r.err, context.DeadlineExceeded)
			require.ErrorContains(t, r.err, "while the destination accepted other messages")
			require.GreaterOrEqual(t, n, 2, "the failure must repeat to be the message's")
			require.False(t, paused(m))
			require.Zero(t, pauses.Load(), "never paused: the destination answered")
			return
		case <-time.After(testTimeout):
			t.Fatal("the message that always times out never returned")
		}
		require.NoError(t, run(t, m, ok, newMessage(context.Background(), "1")).err)
		answered <- struct{}{}
	}
}

// TestMiddlewareShortOwnFailureIsNotCharged: a message failing Unavailable
// while others get through, for less than ten times CircuitMaxBackoff (a
// partition electing a new leader), is not charged: released as Unavailable
// when its context ends.
func TestMiddlewareShortOwnFailureIsNotCharged(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.CircuitMaxBackoff = time.Hour
	m := newMiddleware(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls, answered := make(chan struct{}), make(chan struct{})
	bad := func(*message.Message) ([]*message.Message, error) {
		select {
		case calls <- struct{}{}:
			<-answered
		case <-ctx.Done():
		}
		return nil, retry.UnavailableError(errors.New("leader not available"))
	}
	done := start(m, bad, newMessage(ctx, "1"))
	ok, _ := script()
	for range 5 {
		select {
		case <-calls:
		case r := <-done:
			t.Fatalf("returned early: %v %v", r.kind, r.err)
		case <-time.After(testTimeout):
			t.Fatal("not retried")
		}
		require.NoError(t, run(t, m, ok, newMessage(context.Background(), "1")).err)
		answered <- struct{}{}
	}
	cancel()
	r := await(t, done)
	require.Equal(t, retry.Unavailable, r.kind, "not charged")
	require.False(t, paused(m))
}

// TestMiddlewareOutageChargesNobody: while every call fails Unavailable,
// the messages are held uncharged however often they fail, and released
// as Unavailable when their context ends.
func TestMiddlewareOutageChargesNobody(t *testing.T) {
	t.Parallel()
	m := newMiddleware(t, fastConfig(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	failed := make(chan struct{}, 100)
	down := func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		select {
		case failed <- struct{}{}:
		default:
		}
		return nil, fmt.Errorf("publish: %w", context.DeadlineExceeded)
	}
	var dones []<-chan result
	for range 3 {
		dones = append(dones, start(m, down, newMessage(ctx, "1")))
	}
	for range 10 {
		select {
		case <-failed:
		case <-time.After(testTimeout):
			t.Fatal("destination not tried")
		}
	}
	require.True(t, paused(m))
	cancel()
	for _, d := range dones {
		r := await(t, d)
		require.Equal(t, retry.Unavailable, r.kind, "an outage charges no message")
		require.Error(t, r.err)
	}
}
