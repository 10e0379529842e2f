package watermilloutbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// logLine is one Error-level line (where the store's warnings go with a
// logger that has no warning level).
type logLine struct {
	msg string
	err error
}

// chanLogger sends its Error lines to a channel.
type chanLogger struct {
	watermill.NopLogger
	lines chan logLine
}

func (l chanLogger) Error(msg string, err error, _ watermill.LogFields) {
	select {
	case l.lines <- logLine{msg, err}:
	default:
	}
}

func (l chanLogger) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// listenThrough runs store.Listen until the test ends; wakes receives a
// value per wake-up.
func listenThrough(t *testing.T, store *outbox.SQLStore) (wakes chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	wakes = make(chan struct{}, 1000)
	go func() {
		defer close(done)
		_ = store.Listen(ctx, func() {
			select {
			case wakes <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return wakes
}

// waitListenState waits, on a ticker, for the store's ListenState.
func waitListenState(t *testing.T, store *outbox.SQLStore, want outbox.ListenState) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for store.ListenState() != want {
		select {
		case <-deadline:
			t.Fatalf("ListenState is %s, want %s", store.ListenState(), want)
		case <-tick.C:
		}
	}
}

// TestListenThroughAPoolerWarns: a LISTEN made through PgBouncer in
// transaction pooling mode cannot receive; its check (a notification the
// store sends itself) finds out, says so once, naming the likely cause and
// the setting that fixes it, and ListenState reports it deaf.
func TestListenThroughAPoolerWarns(t *testing.T) {
	t.Parallel()
	db := testenv.PgBouncer(t)
	logs := chanLogger{lines: make(chan logLine, 10)}
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL,
		Outbox: config.Config{Table: testenv.TableName(t)}}, logs)
	require.NoError(t, err)
	require.Equal(t, outbox.ListenOff, store.ListenState())
	listenThrough(t, store)

	select {
	case l := <-logs.lines:
		require.Contains(t, l.msg, "LISTEN receives no notifications")
		require.Contains(t, l.msg, "transaction pooler")
		require.Contains(t, l.msg, "OUTBOX_LISTEN_DATABASE_URL")
	case <-time.After(30 * time.Second):
		t.Fatal("no warning")
	}
	require.Equal(t, outbox.ListenDeaf, store.ListenState())
}

// TestListenURLThroughAPooler: with ListenURL at PostgreSQL's direct
// address, a store whose pool goes through PgBouncer LISTENs directly: its
// check passes, and a commit made through the pooler wakes it.
func TestListenURLThroughAPooler(t *testing.T) {
	t.Parallel()
	db := testenv.PgBouncer(t)
	table := testenv.TableName(t)
	logs := chanLogger{lines: make(chan logLine, 10)}
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL,
		Outbox: config.Config{Table: table, ListenURL: testenv.PostgresDSN()}}, logs)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
	wakes := listenThrough(t, store)
	waitListenState(t, store, outbox.ListenReceiving)

	// Drain the wake-ups of the connect and the check, then commit.
	for len(wakes) > 0 {
		<-wakes
	}
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	require.NoError(t, pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	select {
	case <-wakes:
	case <-time.After(30 * time.Second):
		t.Fatal("the commit's notification did not wake the listener")
	}
	select {
	case l := <-logs.lines:
		t.Fatalf("unexpected log line: %s: %v", l.msg, l.err)
	default:
	}
}

// TestListenURLIsPostgreSQLOnly: ListenURL on another dialect is a
// configuration error.
func TestListenURLIsPostgreSQLOnly(t *testing.T) {
	t.Parallel()
	_, err := outbox.NewSQLStore(testenv.SQLite(t), outbox.SQLStoreConfig{Dialect: outbox.SQLite,
		Outbox: config.Config{ListenURL: "postgres://db/app"}}, nil)
	require.ErrorContains(t, err, "invalid config: ListenURL")
}
