package forwarder_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// spy is a Store decorator that records what the relay asks of the store.
type spy struct {
	relaystore.Store
	mu     sync.Mutex
	claims []relaystore.ClaimRequest
	delays []time.Duration
}

func (s *spy) Claim(ctx context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	s.mu.Lock()
	s.claims = append(s.claims, req)
	s.mu.Unlock()
	return s.Store.Claim(ctx, req)
}

func (s *spy) RecordFailure(ctx context.Context, token string, id int64, lastError string, delay time.Duration) (int, error) {
	s.mu.Lock()
	s.delays = append(s.delays, delay)
	s.mu.Unlock()
	return s.Store.RecordFailure(ctx, token, id, lastError, delay)
}

func (s *spy) claimCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.claims)
}

func (s *spy) firstClaim(t *testing.T) relaystore.ClaimRequest {
	t.Helper()
	waitFor(t, 30*time.Second, "a claim", func() bool { return s.claimCount() > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claims[0]
}

// claimLimits returns the limits of the claims so far.
func (s *spy) claimLimits() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(s.claims))
	for i, c := range s.claims {
		out[i] = c.Limit
	}
	return out
}

func (s *spy) failureDelays() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.delays...)
}

// fromEnv is the store of e's table with the settings of the environment
// vars (prefix OUTBOX_), as a program using config.FromEnv gets them.
func fromEnv(t *testing.T, e *relayEnv, vars map[string]string) *outbox.SQLStore {
	t.Helper()
	return e.with(t, envConfig(t, vars))
}

// envPrefixes numbers the environment prefixes of envConfig.
var envPrefixes atomic.Int64

// envConfig reads vars (prefix OUTBOX_) through the process environment,
// as config.FromEnv does, under a prefix of the test's own so that
// parallel tests do not see each other's variables.
func envConfig(t *testing.T, vars map[string]string) config.Config {
	t.Helper()
	prefix := fmt.Sprintf("ENVTEST%d_OUTBOX_", envPrefixes.Add(1))
	for k, v := range vars {
		name := prefix + strings.TrimPrefix(k, "OUTBOX_")
		require.NoError(t, os.Setenv(name, v))
		t.Cleanup(func() { _ = os.Unsetenv(name) })
	}
	cfg, err := config.FromEnvWithPrefix(prefix)
	require.NoError(t, err)
	return cfg
}

// TestEveryEnvironmentVariableChangesBehaviour: each variable of the
// configuration table (docs/configuration.md), read by config.FromEnv and given once to
// the store, changes what the publisher or the relay does.
func TestEveryEnvironmentVariableChangesBehaviour(t *testing.T) {
	t.Parallel()
	fast := func(extra map[string]string) map[string]string {
		vars := map[string]string{
			"OUTBOX_POLLING_INTERVAL_SECONDS":  "0.01",
			"OUTBOX_RETRY_BACKOFF_MIN_SECONDS": "0.005",
			"OUTBOX_RETRY_BACKOFF_MAX_SECONDS": "0.02",
		}
		for k, v := range extra {
			vars[k] = v
		}
		return vars
	}
	failing := func() *recorder {
		dest := newRecorder()
		dest.setFail(func(string, *message.Message) error { return errors.New("refused") })
		return dest
	}

	t.Run("OUTBOX_TABLE", func(t *testing.T) {
		t.Parallel()
		db := testenv.SQLite(t)
		cfg := envConfig(t, map[string]string{"OUTBOX_TABLE": "from_env_outbox"})
		store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.SQLite, Outbox: cfg}, nil)
		require.NoError(t, err)
		require.NoError(t, store.Migrate(context.Background()))
		pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		var n int
		require.NoError(t, db.QueryRow(`SELECT count(*) FROM from_env_outbox`).Scan(&n))
		require.Equal(t, 1, n)
	})

	t.Run("OUTBOX_POLLING_INTERVAL_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		quick := &spy{Store: fromEnv(t, e, map[string]string{"OUTBOX_POLLING_INTERVAL_SECONDS": "0.01", "OUTBOX_DISABLE_NOTIFY": "true"})}
		slow := &spy{Store: fromEnv(t, e, map[string]string{"OUTBOX_POLLING_INTERVAL_SECONDS": "3600", "OUTBOX_DISABLE_NOTIFY": "true"})}
		runForwarder(t, slow, newRecorder(), forwarder.Config{})
		waitFor(t, 30*time.Second, "the slow relay's first claim", func() bool { return slow.claimCount() == 1 })
		runForwarder(t, quick, newRecorder(), forwarder.Config{})
		waitFor(t, 30*time.Second, "20 polls of the quick relay", func() bool { return quick.claimCount() >= 20 })
		require.Equal(t, 1, slow.claimCount(), "meanwhile the hour-long interval polled once, at start")
	})

	t.Run("OUTBOX_BATCH_SIZE", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		s := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_BATCH_SIZE": "7"}))}
		dest := newRecorder()
		runForwarder(t, s, dest, forwarder.Config{})
		// The first claims take one row, until the window has seen one
		// (MaxInFlightBytes); then an idle relay's claims take BatchSize.
		e.publish(t, "t", 1, nil)
		dest.waitDistinct(t, 1, 30*time.Second)
		waitFor(t, 30*time.Second, "a claim of BatchSize rows", func() bool { return slices.Contains(s.claimLimits(), 7) })
	})

	t.Run("OUTBOX_MAX_RETRY_COUNT", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_MAX_RETRY_COUNT": "2"})), failing(), forwarder.Config{})
		e.publish(t, "t", 1, nil)
		waitFor(t, 30*time.Second, "dead after 2 attempts", func() bool { return e.count(t, "state = 'dead' AND attempts = 2") == 1 })
	})

	t.Run("OUTBOX_CLAIM_TIMEOUT_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		s := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_CLAIM_TIMEOUT_SECONDS": "42"}))}
		runForwarder(t, s, newRecorder(), forwarder.Config{})
		require.Equal(t, 42*time.Second, s.firstClaim(t).Lease)
	})

	// One failed attempt of a row that failed ten times before: the delay
	// is between min/2 and max.
	backoffAfterTenFailures := func(t *testing.T, vars map[string]string) time.Duration {
		e := newRelayEnv(t, backends[2])
		vars["OUTBOX_MAX_RETRY_COUNT"] = "100"
		vars["OUTBOX_POLLING_INTERVAL_SECONDS"] = "0.01"
		s := &spy{Store: fromEnv(t, e, vars)}
		e.publish(t, "t", 1, nil)
		_, err := e.db.Exec(`UPDATE ` + e.table + ` SET attempts = 10`)
		require.NoError(t, err)
		runForwarder(t, s, failing(), forwarder.Config{})
		waitFor(t, 30*time.Second, "a failure", func() bool { return len(s.failureDelays()) > 0 })
		return s.failureDelays()[0]
	}

	t.Run("OUTBOX_RETRY_BACKOFF_MIN_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		s := &spy{Store: fromEnv(t, e, map[string]string{"OUTBOX_POLLING_INTERVAL_SECONDS": "0.01", "OUTBOX_RETRY_BACKOFF_MIN_SECONDS": "40"})}
		e.publish(t, "t", 1, nil)
		runForwarder(t, s, failing(), forwarder.Config{})
		waitFor(t, 30*time.Second, "a failure", func() bool { return len(s.failureDelays()) > 0 })
		d := s.failureDelays()[0]
		require.True(t, d >= 20*time.Second && d <= 40*time.Second, "first retry after min/2..min, got %s", d)
	})

	t.Run("OUTBOX_RETRY_BACKOFF_MAX_SECONDS", func(t *testing.T) {
		t.Parallel()
		d := backoffAfterTenFailures(t, map[string]string{"OUTBOX_RETRY_BACKOFF_MAX_SECONDS": "2"})
		require.LessOrEqual(t, d, 2*time.Second, "capped by the variable")
		d = backoffAfterTenFailures(t, map[string]string{})
		require.GreaterOrEqual(t, d, 30*time.Second, "the default cap, 60s, for comparison")
	})

	t.Run("OUTBOX_PUBLISHED_RETENTION_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		dest := newRecorder()
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_PUBLISHED_RETENTION_SECONDS": "3600"})), dest, forwarder.Config{})
		e.publish(t, "t", 3, nil)
		dest.waitDistinct(t, 3, 30*time.Second)
		waitFor(t, 30*time.Second, "kept as published", func() bool { return e.count(t, "state = 'published'") == 3 })
	})

	t.Run("OUTBOX_MAX_IN_FLIGHT", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		s := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_MAX_IN_FLIGHT": "1"}))}
		e.publish(t, "t", 5, nil)
		dest := newRecorder()
		runForwarder(t, s, dest, forwarder.Config{})
		dest.waitDistinct(t, 5, 30*time.Second)
		for _, limit := range s.claimLimits() {
			require.Equal(t, 1, limit, "a claim takes what the window has room for, even draining a backlog")
		}
	})

	t.Run("OUTBOX_MAX_IN_FLIGHT_BYTES", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		s := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_MAX_IN_FLIGHT_BYTES": "1"}))}
		e.publish(t, "t", 5, nil)
		dest := newRecorder()
		runForwarder(t, s, dest, forwarder.Config{})
		dest.waitDistinct(t, 5, 30*time.Second)
		for _, limit := range s.claimLimits() {
			require.Equal(t, 1, limit, "one row at a time fits one byte")
		}
	})

	t.Run("OUTBOX_DISABLE_ORDERING", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		ordered := &spy{Store: fromEnv(t, e, fast(nil))}
		unordered := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_DISABLE_ORDERING": "true"}))}
		runForwarder(t, ordered, newRecorder(), forwarder.Config{HandlerName: "o"})
		runForwarder(t, unordered, newRecorder(), forwarder.Config{HandlerName: "u"})
		require.True(t, ordered.firstClaim(t).Ordered)
		require.False(t, unordered.firstClaim(t).Ordered)
	})

	t.Run("OUTBOX_STRICT_ORDER", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		plain := &spy{Store: fromEnv(t, e, fast(nil))}
		strict := &spy{Store: fromEnv(t, e, fast(map[string]string{"OUTBOX_STRICT_ORDER": "true"}))}
		runForwarder(t, plain, newRecorder(), forwarder.Config{HandlerName: "p"})
		runForwarder(t, strict, newRecorder(), forwarder.Config{HandlerName: "s"})
		require.False(t, plain.firstClaim(t).StrictOrder)
		require.True(t, strict.firstClaim(t).StrictOrder, "a dead head holds its key")
	})

	t.Run("OUTBOX_MAX_PAYLOAD_BYTES", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		pub, err := outbox.NewPublisher(fromEnv(t, e, map[string]string{"OUTBOX_MAX_PAYLOAD_BYTES": "10"}), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), make([]byte, 10))))
		for range 9 {
			err := pub.Publish("t", message.NewMessage(watermill.NewUUID(), make([]byte, 11)))
			require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		}
		require.Equal(t, 1, e.count(t, "1=1"))
	})

	t.Run("OUTBOX_MAX_METADATA_BYTES", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		pub, err := outbox.NewPublisher(fromEnv(t, e, map[string]string{"OUTBOX_MAX_METADATA_BYTES": "64"}), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		withMetadata := func(n int) *message.Message {
			m := message.NewMessage(watermill.NewUUID(), []byte("x"))
			m.Metadata.Set("k", strings.Repeat("v", n))
			return m
		}
		require.NoError(t, pub.Publish("t", withMetadata(64-1-8)))
		require.ErrorIs(t, pub.Publish("t", withMetadata(64-1-8+1)), outbox.ErrMetadataTooLarge)
		require.Equal(t, 1, e.count(t, "1=1"))
	})

	t.Run("OUTBOX_DISABLE_NOTIFY", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[0]) // PostgreSQL
		// The relay: no LISTEN.
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_DISABLE_NOTIFY": "true"})), newRecorder(), forwarder.Config{})
		// The publisher: no NOTIFY.
		pub, err := outbox.NewPublisher(fromEnv(t, e, map[string]string{"OUTBOX_DISABLE_NOTIFY": "true"}), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.Zero(t, notificationsBetween(t, e, func() {
			require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		}))
		require.Zero(t, listenerPID(t, e), "the relay did not LISTEN")
		// Without the variable, both.
		notifying, err := outbox.NewPublisher(fromEnv(t, e, nil), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.Equal(t, 1, notificationsBetween(t, e, func() {
			require.NoError(t, notifying.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		}))
	})

	t.Run("OUTBOX_NOTIFY_INTERVAL_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[0]) // PostgreSQL
		coalescing, err := outbox.NewPublisher(fromEnv(t, e, map[string]string{"OUTBOX_NOTIFY_INTERVAL_SECONDS": "1"}), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.Equal(t, 1, notificationsBetween(t, e, func() {
			for range 3 {
				require.NoError(t, coalescing.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
			}
		}), "one NOTIFY per second at most")
		eager, err := outbox.NewPublisher(fromEnv(t, e, map[string]string{"OUTBOX_NOTIFY_INTERVAL_SECONDS": "0.0001"}), outbox.PublisherConfig{AutoCommit: true}, nil)
		require.NoError(t, err)
		require.Equal(t, 3, notificationsBetween(t, e, func() {
			for range 3 {
				require.NoError(t, eager.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
				for start := time.Now(); time.Since(start) <= 100*time.Microsecond; {
				}
			}
		}), "one per Publish when they are further apart than the interval")
	})

	t.Run("OUTBOX_LISTEN_DATABASE_URL", func(t *testing.T) {
		t.Parallel()
		// The store through PgBouncer (transaction pooling), the variable
		// unset: its LISTEN cannot receive. Set to PostgreSQL's address,
		// it LISTENs there and receives.
		e := newRelayEnv(t, backend{name: "pgbouncer", dialect: outbox.PostgreSQL,
			open: func(t *testing.T) *sql.DB { return testenv.Postgres(t) }, pooled: func(t *testing.T) *sql.DB { return testenv.PgBouncer(t) }})
		through := fromEnv(t, e, fast(nil))
		direct := fromEnv(t, e, fast(map[string]string{"OUTBOX_LISTEN_DATABASE_URL": testenv.PostgresDSN()}))
		runForwarder(t, through, newRecorder(), forwarder.Config{HandlerName: "through"})
		runForwarder(t, direct, newRecorder(), forwarder.Config{HandlerName: "direct"})
		waitFor(t, 30*time.Second, "the direct LISTEN's check", func() bool { return direct.ListenState() == outbox.ListenReceiving })
		waitFor(t, 30*time.Second, "the pooled LISTEN's check", func() bool { return through.ListenState() == outbox.ListenDeaf })
	})

	t.Run("OUTBOX_UNAVAILABLE_BACKOFF_MAX_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		down := func() (*recorder, *atomic.Int32) {
			var probes atomic.Int32
			dest := newRecorder()
			dest.setFail(func(string, *message.Message) error {
				probes.Add(1)
				return retry.UnavailableError(errors.New("broker down"))
			})
			return dest, &probes
		}
		quickDest, quick := down()
		slowDest, slow := down()
		e.publish(t, "quick", 1, nil)
		e.publish(t, "slow", 1, nil)
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_UNAVAILABLE_BACKOFF_MAX_SECONDS": "0.02"})), quickDest,
			forwarder.Config{HandlerName: "quick", Topics: []string{"quick"}})
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_UNAVAILABLE_BACKOFF_MAX_SECONDS": "60"})), slowDest,
			forwarder.Config{HandlerName: "slow", Topics: []string{"slow"}})
		waitFor(t, 30*time.Second, "30 probes with a 20ms cap", func() bool { return quick.Load() >= 30 })
		require.Less(t, slow.Load(), int32(15), "with a 60s cap the pauses grow past the 20ms cap's")
		require.Zero(t, e.count(t, "attempts > 0"), "an unavailable broker charges nothing")
	})

	t.Run("OUTBOX_RELAY_TIMEOUT_SECONDS", func(t *testing.T) {
		t.Parallel()
		e := newRelayEnv(t, backends[2])
		// Each relay registers alive for its timeout: the time others
		// wait before taking its rows over, should it die. (On SQLite,
		// this backend, a heartbeat lasts at least 15 s.)
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_RELAY_TIMEOUT_SECONDS": "20"})), newRecorder(), forwarder.Config{HandlerName: "quick"})
		runForwarder(t, fromEnv(t, e, fast(map[string]string{"OUTBOX_RELAY_TIMEOUT_SECONDS": "3600"})), newRecorder(), forwarder.Config{HandlerName: "slow"})
		var left []int64 // µs each relay is alive for from now
		waitFor(t, 30*time.Second, "both relays to register", func() bool {
			var err error
			left, err = queryInts(e.db, `SELECT alive_until - CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM `+e.table+`_relays ORDER BY 1`)
			require.NoError(t, err)
			return len(left) == 2
		})
		require.LessOrEqual(t, left[0], int64(20*time.Second/time.Microsecond), "alive for at most 20s")
		require.Greater(t, left[1], int64(3000*time.Second/time.Microsecond), "alive for about an hour")
	})
}

func queryInts(db *sql.DB, q string) ([]int64, error) {
	rows, err := db.Query(q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// notificationsBetween counts the NOTIFYs on e's channel that fn causes:
// it listens, runs fn, then notifies a sentinel itself and counts what came
// before it.
func notificationsBetween(t *testing.T, e *relayEnv, fn func()) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testenv.PostgresDSN())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	channel := sqlident.NotifyChannel(e.table)
	_, err = conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize())
	require.NoError(t, err)
	fn()
	_, err = e.db.Exec(`SELECT pg_notify($1, 'sentinel')`, channel)
	require.NoError(t, err)
	n := 0
	for {
		note, err := conn.WaitForNotification(ctx)
		require.NoError(t, err)
		if note.Payload == "sentinel" {
			// Its backend outlives Close for a moment: UNLISTEN first, so
			// listenerPID never takes it for the relay's.
			_, err = conn.Exec(ctx, "UNLISTEN *")
			require.NoError(t, err)
			return n
		}
		n++
	}
}
