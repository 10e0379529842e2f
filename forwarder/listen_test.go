package forwarder_test

import (
	"testing"
	"time"

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
