package forwarder_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// requireUntouched asserts the table holds exactly n rows, all pending,
// unclaimed and never attempted: a misused forwarder wrote nothing.
func requireUntouched(t *testing.T, e *relayEnv, n int) {
	t.Helper()
	require.Equal(t, n, e.count(t, "1=1"))
	require.Equal(t, n, e.count(t, "state = 'pending' AND claim_token IS NULL AND attempts = 0 AND published_at IS NULL"))
}

// closeAll calls close from several goroutines at once and returns their
// results.
func closeAll(close func() error) []error {
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = close()
		}()
	}
	wg.Wait()
	return errs
}

// TestForwarderMisuseWritesNothing: Close twice (at once, from several
// goroutines) before and after running, Run after Close, Run twice: each a
// clear answer, and a closed forwarder never claims or publishes a row.
func TestForwarderMisuseWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		e.publish(t, "t", 20, nil)
		dest := newRecorder()

		never, err := forwarder.NewForwarder(e.store, dest, forwarder.Config{}, nil)
		require.NoError(t, err)
		for _, err := range closeAll(never.Close) {
			require.NoError(t, err, "Close before Run, several at once")
		}
		require.ErrorIs(t, never.Run(context.Background()), outbox.ErrClosed, "Run after Close")
		require.ErrorIs(t, never.Run(context.Background()), outbox.ErrClosed, "Run after Close, again")
		require.Zero(t, dest.distinct())
		requireUntouched(t, e, 20)

		// One that ran, was closed, and is asked to run again.
		ran := runForwarder(t, e.store, dest, forwarder.Config{})
		require.ErrorIs(t, ran.Run(context.Background()), forwarder.ErrRunning, "Run twice")
		dest.waitDistinct(t, 20, 30*time.Second)
		waitFor(t, 10*time.Second, "acks written", func() bool { return e.count(t, "1=1") == 0 })
		for _, err := range closeAll(ran.Close) {
			require.NoError(t, err, "Close after Run, several at once")
		}
		require.NoError(t, ran.Close(), "Close once more")

		e.publish(t, "t", 10, nil)
		require.ErrorIs(t, ran.Run(context.Background()), outbox.ErrClosed, "Run after Close")
		require.Equal(t, 20, dest.distinct(), "nothing published after Close")
		requireUntouched(t, e, 10)
	})
}

// TestForwarderConcurrentRun: of two Runs started together, exactly one
// runs; the other returns ErrRunning at once.
func TestForwarderConcurrentRun(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		f, err := forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{}, nil)
		require.NoError(t, err)
		results := make(chan error, 2)
		for range 2 {
			go func() { results <- f.Run(context.Background()) }()
		}
		select {
		case err := <-results:
			require.ErrorIs(t, err, forwarder.ErrRunning)
		case <-time.After(30 * time.Second):
			t.Fatal("neither Run returned ErrRunning")
		}
		select {
		case <-f.Running():
		case <-time.After(10 * time.Second):
			t.Fatal("the other Run does not run")
		}
		require.NoError(t, f.Close())
		select {
		case err := <-results:
			require.NoError(t, err, "the running Run ends cleanly on Close")
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after Close")
		}
	})
}

// TestSubscriberMisuseWritesNothing: Subscribe with an empty topic, Close
// twice at once, Subscribe after Close: errors, and no row claimed.
func TestSubscriberMisuseWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		e.publish(t, "t", 5, nil)
		sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{}, nil)
		require.NoError(t, err)
		_, err = sub.Subscribe(context.Background(), "")
		require.ErrorContains(t, err, "empty topic")
		for _, err := range closeAll(sub.Close) {
			require.NoError(t, err)
		}
		_, err = sub.Subscribe(context.Background(), forwarder.AllTopics)
		require.ErrorIs(t, err, outbox.ErrClosed)
		sub.Wake() // harmless after Close
		requireUntouched(t, e, 5)
	})
}

// configured is a Store decorator that reports other settings.
type configured struct {
	relaystore.Store
	cfg config.Config
}

func (c configured) Config() config.Config { return c.cfg }

// TestInvalidConfigEveryFieldWritesNothing: every invalid setting, set in
// code, is refused by NewSQLStore, and by NewForwarder and NewSubscriber
// when a custom Store reports it, with an error naming the field; no row is
// touched.
func TestInvalidConfigEveryFieldWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		e.publish(t, "t", 3, nil)
		cases := []struct {
			field  string
			modify func(c *config.Config)
		}{
			{"Table", func(c *config.Config) { c.Table = "x; DROP TABLE " + e.table }},
			{"Table", func(c *config.Config) { c.Table = `x"y` }},
			{"Table", func(c *config.Config) { c.Table = "a b" }},
			{"PollingInterval", func(c *config.Config) { c.PollingInterval = -time.Second }},
			{"PollingInterval", func(c *config.Config) { c.PollingInterval = time.Nanosecond }},
			{"BatchSize", func(c *config.Config) { c.BatchSize = -1 }},
			{"BatchSize", func(c *config.Config) { c.BatchSize = config.MaxBatchSize + 1 }},
			{"MaxRetryCount", func(c *config.Config) { c.MaxRetryCount = -1 }},
			{"ClaimTimeout", func(c *config.Config) { c.ClaimTimeout = -time.Minute }},
			{"ClaimTimeout", func(c *config.Config) { c.ClaimTimeout = time.Millisecond }},
			{"ClaimTimeout", func(c *config.Config) { c.ClaimTimeout = time.Duration(-1 << 63) }},
			{"RetryBackoffMin", func(c *config.Config) { c.RetryBackoffMin = -time.Second }},
			{"RetryBackoffMax", func(c *config.Config) { c.RetryBackoffMax = -time.Second }},
			{"RetryBackoffMin", func(c *config.Config) { c.RetryBackoffMin, c.RetryBackoffMax = time.Minute, time.Second }},
			{"PublishedRetention", func(c *config.Config) { c.PublishedRetention = -time.Hour }},
			{"MaxInFlight", func(c *config.Config) { c.MaxInFlight = -1 }},
			{"MaxPayloadBytes", func(c *config.Config) { c.MaxPayloadBytes = -1 }},
		}
		for _, c := range cases {
			cfg := fastConfig()
			cfg.Table = e.table
			c.modify(&cfg)
			_, err := outbox.NewSQLStore(e.db, outbox.SQLStoreConfig{Dialect: e.backend.dialect, Outbox: cfg}, nil)
			require.ErrorContains(t, err, "invalid config", "NewSQLStore")
			if c.field != "Table" { // the store's own check names ErrInvalidTableName
				require.ErrorContains(t, err, c.field+":", "NewSQLStore")
			}
			custom := configured{Store: e.store, cfg: cfg}
			_, err = forwarder.NewForwarder(custom, newRecorder(), forwarder.Config{}, nil)
			require.ErrorContains(t, err, c.field+":", "NewForwarder")
			require.ErrorContains(t, err, "invalid config")
			_, err = forwarder.NewSubscriber(custom, forwarder.SubscriberConfig{}, nil)
			require.ErrorContains(t, err, c.field+":", "NewSubscriber")
		}
		requireUntouched(t, e, 3)
	})
}
