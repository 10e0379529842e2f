package forwarder_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// listenerPID returns the backend pid of the relay's LISTEN connection on
// the table's channel, 0 while there is none.
func listenerPID(t *testing.T, e *relayEnv) int {
	t.Helper()
	var pid int
	err := e.db.QueryRow(`SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE query = 'LISTEN "' || $1 || '"'`,
		sqlident.NotifyChannel(e.table)).Scan(&pid)
	require.NoError(t, err)
	return pid
}

// TestWakeOnCommit: with an hour-long polling interval, only the commit
// notification can bring a message across; it does, also after the LISTEN
// connection was killed and re-established.
func TestWakeOnCommit(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0]) // PostgreSQL
	require.Equal(t, outbox.PostgreSQL, e.backend.dialect)
	cfg := fastConfig()
	cfg.PollingInterval = time.Hour
	dest := newRecorder()
	runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})

	var first int
	waitFor(t, 30*time.Second, "relay listening", func() bool { first = listenerPID(t, e); return first != 0 })
	e.publish(t, "t", 1, nil)
	dest.waitDistinct(t, 1, 30*time.Second)

	var killed bool
	require.NoError(t, e.db.QueryRow(`SELECT pg_terminate_backend($1)`, first).Scan(&killed))
	require.True(t, killed)
	waitFor(t, 30*time.Second, "relay listening again", func() bool {
		pid := listenerPID(t, e)
		return pid != 0 && pid != first
	})
	e.publish(t, "t", 1, nil)
	dest.waitDistinct(t, 2, 30*time.Second)
}

// TestWakeAfterALateCommit: a transaction that skipped its NOTIFY (another
// one had sent one within the coalescing window) relies on the relay's
// look one NotifyInterval after the wake-up. One that published in the
// second half of that interval and commits after the look sends its own
// NOTIFY, and is not left for the poll (an hour here). With a window as
// long as the interval it skipped, and waited.
func TestWakeAfterALateCommit(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0]) // PostgreSQL
	const interval = 400 * time.Millisecond
	cfg := fastConfig()
	cfg.PollingInterval = time.Hour
	cfg.NotifyInterval = interval
	store := e.with(t, cfg)
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	dest := newRecorder()
	runForwarder(t, store, dest, forwarder.Config{})
	waitFor(t, 30*time.Second, "relay listening", func() bool { return listenerPID(t, e) != 0 })

	first := time.Now()
	require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("first"))))
	dest.waitDistinct(t, 1, 30*time.Second)

	tx, err := e.db.Begin()
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	// Publish past the window, within the interval; commit past the
	// relay's look.
	<-time.After(time.Until(first.Add(interval * 6 / 10)))
	require.NoError(t, pub.WithTx(tx).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("late"))))
	<-time.After(time.Until(first.Add(interval * 3 / 2)))
	require.NoError(t, tx.Commit())
	dest.waitDistinct(t, 2, 20*time.Second)
}

// TestWakeOnCommitDisabled: DisableNotify keeps the relay off LISTEN.
func TestWakeOnCommitDisabled(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0])
	cfg := fastConfig()
	cfg.DisableNotify = true
	dest := newRecorder()
	runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
	e.publish(t, "t", 3, nil)
	dest.waitDistinct(t, 3, 30*time.Second) // by polling
	require.Zero(t, listenerPID(t, e))
}

// TestNotifierWakesRelay: a publisher in the relay's process tells it about
// committed rows directly, on any dialect (here SQLite, which has no
// LISTEN).
func TestNotifierWakesRelay(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[2]) // SQLite
	cfg := fastConfig()
	cfg.PollingInterval = time.Hour
	dest := newRecorder()
	f := runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})
	pub, err := outbox.NewPublisher(e.store, outbox.PublisherConfig{AutoCommit: true, Notifier: f.Subscriber()}, nil)
	require.NoError(t, err)
	for i := range 3 {
		e.pub = pub
		e.publish(t, "t", 1, nil)
		dest.waitDistinct(t, i+1, 30*time.Second)
	}
}

// TestWakeOnCommitThroughDecoratedStore: the wake-up source is part of the
// Store contract (Listen), so a decorator — a metrics or tracing wrapper, a
// user's own — that embeds the store keeps the relay listening. With an
// hour-long polling interval only the notification can bring the message.
func TestWakeOnCommitThroughDecoratedStore(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0]) // PostgreSQL
	cfg := fastConfig()
	cfg.PollingInterval = time.Hour
	dest := newRecorder()
	runForwarder(t, configured{Store: e.with(t, cfg), cfg: cfg}, dest, forwarder.Config{})
	waitFor(t, 30*time.Second, "relay listening", func() bool { return listenerPID(t, e) != 0 })
	e.publish(t, "t", 1, nil)
	dest.waitDistinct(t, 1, 30*time.Second)
}
