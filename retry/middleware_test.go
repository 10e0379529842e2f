package retry_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// testTimeout bounds every wait; tests never sleep to let things happen.
const testTimeout = 10 * time.Second

// fastConfig has tiny delays so retries finish at once.
func fastConfig() retry.MiddlewareConfig {
	return retry.MiddlewareConfig{
		MaxRetryCount:     5,
		QuickRetryDelay:   time.Millisecond,
		CircuitMinBackoff: time.Millisecond,
		CircuitMaxBackoff: 2 * time.Millisecond,
	}
}

func newMiddleware(t *testing.T, cfg retry.MiddlewareConfig, logger watermill.LoggerAdapter) *retry.Middleware {
	t.Helper()
	m, err := retry.NewMiddleware(cfg, logger)
	require.NoError(t, err)
	return m
}

// newMessage returns a message as the relay's subscriber emits it: with an
// Outcome in its context and the relay metadata. An empty attempt leaves
// the attempt metadata out.
func newMessage(ctx context.Context, attempt string) (*message.Message, *retry.Outcome) {
	msg := message.NewMessage("uuid-1", []byte("payload"))
	msg.Metadata.Set(outbox.OutboxIDMetadataKey, "42")
	if attempt != "" {
		msg.Metadata.Set(outbox.AttemptMetadataKey, attempt)
	}
	ctx, o := retry.ContextWithOutcome(ctx)
	msg.SetContext(ctx)
	return msg, o
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
	err  error
}

// start runs the middleware-wrapped h on msg in a goroutine.
func start(m *retry.Middleware, h message.HandlerFunc, msg *message.Message) <-chan result {
	done := make(chan result, 1)
	go func() {
		msgs, err := m.Middleware(h)(msg)
		done <- result{msgs, err}
	}()
	return done
}

// run runs the middleware-wrapped h on msg and returns its error.
func run(t *testing.T, m *retry.Middleware, h message.HandlerFunc, msg *message.Message) error {
	t.Helper()
	return await(t, start(m, h, msg)).err
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

func requireOutcome(t *testing.T, o *retry.Outcome, want retry.Kind) error {
	t.Helper()
	kind, err, ok := o.Get()
	require.True(t, ok, "no outcome recorded")
	require.Equal(t, want, kind)
	return err
}

func requireNoOutcome(t *testing.T, o *retry.Outcome) {
	t.Helper()
	kind, err, ok := o.Get()
	require.False(t, ok, "outcome recorded: %s, %v", kind, err)
}

func TestMiddlewareSuccess(t *testing.T) {
	t.Parallel()

	produced := []*message.Message{message.NewMessage("out", nil)}
	m := newMiddleware(t, fastConfig(), nil)
	msg, o := newMessage(context.Background(), "1")
	r := await(t, start(m, func(*message.Message) ([]*message.Message, error) { return produced, nil }, msg))
	require.NoError(t, r.err)
	require.Equal(t, produced, r.msgs)
	requireNoOutcome(t, o)
	require.False(t, m.CircuitOpen())
}

func TestMiddlewarePermanent(t *testing.T) {
	t.Parallel()

	logger := watermill.NewCaptureLogger()
	m := newMiddleware(t, fastConfig(), logger)
	cause := errors.New("message too large")
	h, calls := always(retry.PermanentError(cause))
	msg, o := newMessage(context.Background(), "1")

	err := run(t, m, h, msg)
	require.ErrorIs(t, err, cause)
	require.EqualValues(t, 1, calls.Load(), "a Permanent failure is not retried")
	require.ErrorIs(t, requireOutcome(t, o, retry.Permanent), cause)

	logged := logger.Captured()[watermill.ErrorLogLevel]
	require.Len(t, logged, 1)
	require.ErrorIs(t, logged[0].Err, cause)
	require.Equal(t, "uuid-1", logged[0].Fields["uuid"])
	require.Equal(t, "42", logged[0].Fields["outbox_id"])
	require.Equal(t, 1, logged[0].Fields["attempt"])
}

func TestMiddlewareTransient(t *testing.T) {
	t.Parallel()

	cause := errors.New("flaky")
	tests := []struct {
		name          string
		attempt       string
		maxRetryCount int
		want          retry.Kind
	}{
		{"first attempt", "1", 5, retry.Transient},
		{"attempt below the budget", "4", 5, retry.Transient},
		{"attempt at the budget", "5", 5, retry.Permanent},
		{"attempt past the budget", "9", 5, retry.Permanent},
		{"missing attempt counts as 1", "", 2, retry.Transient},
		{"garbage attempt counts as 1", "x", 2, retry.Transient},
		{"negative attempt counts as 1", "-3", 2, retry.Transient},
		{"budget of one attempt", "", 1, retry.Permanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			cfg := fastConfig()
			cfg.MaxRetryCount = tt.maxRetryCount
			m := newMiddleware(t, cfg, nil)
			h, calls := always(cause)
			msg, o := newMessage(context.Background(), tt.attempt)

			err := run(t, m, h, msg)
			require.ErrorIs(t, err, cause)
			require.EqualValues(t, 1, calls.Load(), "no quick retries by default")
			reported := requireOutcome(t, o, tt.want)
			require.ErrorIs(t, reported, cause)
			if tt.want == retry.Permanent {
				require.ErrorContains(t, reported, "budget")
				require.ErrorContains(t, err, "budget")
			} else {
				require.Same(t, cause, reported)
			}
		})
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
		msg, o := newMessage(context.Background(), "1")

		require.NoError(t, run(t, m, h, msg))
		require.EqualValues(t, 3, calls.Load())
		requireNoOutcome(t, o)
	})

	t.Run("exhausted", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 2
		m := newMiddleware(t, cfg, nil)
		cause := errors.New("flaky")
		h, calls := always(cause)
		msg, o := newMessage(context.Background(), "1")

		require.ErrorIs(t, run(t, m, h, msg), cause)
		require.EqualValues(t, 3, calls.Load())
		require.Same(t, cause, requireOutcome(t, o, retry.Transient))
	})

	t.Run("not for Permanent", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 2
		m := newMiddleware(t, cfg, nil)
		h, calls := always(retry.PermanentError(errors.New("bad")))
		msg, o := newMessage(context.Background(), "1")

		require.Error(t, run(t, m, h, msg))
		require.EqualValues(t, 1, calls.Load())
		requireOutcome(t, o, retry.Permanent)
	})

	t.Run("stop within half the lease", func(t *testing.T) {
		t.Parallel()
		cfg := fastConfig()
		cfg.QuickRetries = 5
		cfg.Lease = time.Nanosecond // half of it has passed before the first retry
		m := newMiddleware(t, cfg, nil)
		h, calls := always(errors.New("flaky"))
		msg, o := newMessage(context.Background(), "1")

		require.Error(t, run(t, m, h, msg))
		require.EqualValues(t, 1, calls.Load())
		requireOutcome(t, o, retry.Transient)
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
		msg, o := newMessage(ctx, "1")

		require.ErrorIs(t, run(t, m, h, msg), cause)
		require.EqualValues(t, 1, calls.Load())
		require.Same(t, cause, requireOutcome(t, o, retry.Transient), "the attempt was made: it is charged")
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
		msg, o := newMessage(context.Background(), "5") // at the budget: must not matter

		require.NoError(t, run(t, m, h, msg))
		require.EqualValues(t, 4, calls.Load())
		requireNoOutcome(t, o)
		require.False(t, m.CircuitOpen(), "a success closes the circuit")

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
		msg, o := newMessage(context.Background(), "1")

		require.ErrorIs(t, run(t, m, h, msg), cause)
		require.EqualValues(t, 2, calls.Load())
		require.ErrorIs(t, requireOutcome(t, o, retry.Permanent), cause)
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
		msg, o := newMessage(ctx, "5")

		require.ErrorIs(t, run(t, m, h, msg), cause)
		require.EqualValues(t, 2, calls.Load())
		require.ErrorIs(t, requireOutcome(t, o, retry.Unavailable), cause, "released, not charged")
	})
}

// openCircuit opens m's circuit: a message fails Unavailable and its context
// ends, so the middleware returns while the circuit stays open.
func openCircuit(t *testing.T, m *retry.Middleware) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msg, _ := newMessage(ctx, "1")
	h := func(*message.Message) ([]*message.Message, error) {
		cancel()
		return nil, retry.UnavailableError(errors.New("down"))
	}
	require.Error(t, run(t, m, h, msg))
	require.True(t, m.CircuitOpen())
}

func TestMiddlewareCircuitHoldsOtherMessages(t *testing.T) {
	t.Parallel()

	cfg := fastConfig()
	cfg.CircuitMinBackoff, cfg.CircuitMaxBackoff = time.Hour, time.Hour
	m := newMiddleware(t, cfg, nil)
	openCircuit(t, m)

	ctx, cancel := context.WithCancel(context.Background())
	h, calls := script()
	msg, o := newMessage(ctx, "1")
	done := start(m, h, msg)
	cancel()

	r := await(t, done)
	require.ErrorIs(t, r.err, context.Canceled)
	require.Zero(t, calls.Load(), "the handler is not called while the circuit is open")
	requireOutcome(t, o, retry.Unavailable)
	require.True(t, m.CircuitOpen())
}

func TestMiddlewareSuccessClosesCircuit(t *testing.T) {
	t.Parallel()

	cfg := fastConfig()
	cfg.CircuitMinBackoff, cfg.CircuitMaxBackoff = time.Hour, time.Hour
	m := newMiddleware(t, cfg, nil)

	// A publish in flight before the outage began...
	entered, release := make(chan struct{}), make(chan struct{})
	inFlight, _ := newMessage(context.Background(), "1")
	inFlightDone := start(m, func(*message.Message) ([]*message.Message, error) {
		close(entered)
		<-release
		return nil, nil
	}, inFlight)
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("handler not called")
	}

	openCircuit(t, m)

	// ...holds a new message at the circuit until it succeeds.
	h, calls := script()
	waiting, o := newMessage(context.Background(), "1")
	waitingDone := start(m, h, waiting)

	close(release)
	require.NoError(t, await(t, inFlightDone).err)
	require.NoError(t, await(t, waitingDone).err)
	require.EqualValues(t, 1, calls.Load())
	requireNoOutcome(t, o)
	require.False(t, m.CircuitOpen())
}

func TestMiddlewareDoneContextIsNotHandled(t *testing.T) {
	t.Parallel()

	m := newMiddleware(t, fastConfig(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h, calls := script()
	msg, o := newMessage(ctx, "1")

	require.ErrorIs(t, run(t, m, h, msg), context.Canceled)
	require.Zero(t, calls.Load())
	requireOutcome(t, o, retry.Unavailable)
}

func TestMiddlewareWithoutOutcome(t *testing.T) {
	t.Parallel()

	m := newMiddleware(t, fastConfig(), nil)
	cause := retry.PermanentError(errors.New("bad"))
	h, _ := always(cause)
	msg := message.NewMessage("uuid-1", nil) // not from the outbox subscriber

	require.ErrorIs(t, run(t, m, h, msg), cause)
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
			msg, o := newMessage(context.Background(), "1")

			require.ErrorIs(t, run(t, m, h, msg), cause)
			require.NotNil(t, seen.Load())
			require.Same(t, cause, *seen.Load())
			requireOutcome(t, o, tt.want)
		})
	}
}

func TestNewMiddlewareConfig(t *testing.T) {
	t.Parallel()

	_, err := retry.NewMiddleware(retry.MiddlewareConfig{}, nil)
	require.NoError(t, err, "the zero config takes the defaults")
	require.NoError(t, retry.MiddlewareConfig{}.Validate())

	tests := []struct {
		name  string
		cfg   retry.MiddlewareConfig
		field string
	}{
		{"MaxRetryCount", retry.MiddlewareConfig{MaxRetryCount: -1}, "MaxRetryCount"},
		{"QuickRetries", retry.MiddlewareConfig{QuickRetries: -1}, "QuickRetries"},
		{"QuickRetryDelay", retry.MiddlewareConfig{QuickRetryDelay: -time.Second}, "QuickRetryDelay"},
		{"Lease", retry.MiddlewareConfig{Lease: -time.Second}, "Lease"},
		{"CircuitMinBackoff", retry.MiddlewareConfig{CircuitMinBackoff: -time.Second}, "CircuitMinBackoff"},
		{"CircuitMaxBackoff", retry.MiddlewareConfig{CircuitMaxBackoff: -time.Second}, "CircuitMaxBackoff"},
		{"min above max", retry.MiddlewareConfig{CircuitMinBackoff: time.Minute, CircuitMaxBackoff: time.Second}, "CircuitMinBackoff"},
		{"min above default max", retry.MiddlewareConfig{CircuitMinBackoff: time.Hour}, "CircuitMinBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := retry.NewMiddleware(tt.cfg, nil)
			require.ErrorContains(t, err, "invalid config: ")
			require.ErrorContains(t, err, tt.field)
		})
	}
}
