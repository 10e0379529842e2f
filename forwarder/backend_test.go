package forwarder_test

import (
	"context"
	"database/sql"
	"strconv"
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

// backend is one database the relay tests run against; every test body runs
// once per backend.
type backend struct {
	name    string
	dialect outbox.Dialect
	open    func(t *testing.T) *sql.DB
	// pgx: the store (claims, writes, LISTEN) runs over a pgx pool, as in
	// a service that uses pgx and no database/sql; the test reads the
	// table through open's *sql.DB.
	pgx bool
	// pooled, when set, opens the *sql.DB the store runs on (open's
	// stays the test's own, direct); with listenURL, the store's
	// config.Config.ListenURL.
	pooled    func(t *testing.T) *sql.DB
	listenURL string
}

var backends = []backend{
	{name: "postgres", dialect: outbox.PostgreSQL, open: func(t *testing.T) *sql.DB { return testenv.Postgres(t) }},
	{name: "mysql", dialect: outbox.MySQL, open: func(t *testing.T) *sql.DB { return testenv.MySQL(t) }},
	{name: "sqlite", dialect: outbox.SQLite, open: func(t *testing.T) *sql.DB { return testenv.SQLite(t) }},
	{name: "postgres-pgx", dialect: outbox.PostgreSQL, open: func(t *testing.T) *sql.DB { return testenv.Postgres(t) }, pgx: true},
	// PostgreSQL through PgBouncer in transaction pooling mode, opened with
	// the plain URL: claims, writes and publishes go through the pooler,
	// the LISTEN to PostgreSQL directly (ListenURL).
	{name: "postgres-pgbouncer", dialect: outbox.PostgreSQL, open: func(t *testing.T) *sql.DB { return testenv.Postgres(t) },
		pooled: func(t *testing.T) *sql.DB { return testenv.PgBouncer(t) }, listenURL: testenv.PostgresDSN()},
}

func forEachBackend(t *testing.T, body func(t *testing.T, env *relayEnv)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			body(t, newRelayEnv(t, b))
		})
	}
}

// relayEnv is one test's outbox: its own table, a publisher and a store
// with fastConfig (with makes one with other settings).
type relayEnv struct {
	backend backend
	db      *sql.DB       // the test's, direct
	storeDB *sql.DB       // the store's: db, or the pooled one
	pool    *pgxpool.Pool // the pgx backend's
	table   string
	pub     *outbox.Publisher
	store   *outbox.SQLStore
}

func newRelayEnv(t *testing.T, b backend) *relayEnv {
	t.Helper()
	db := b.open(t)
	e := &relayEnv{backend: b, db: db, storeDB: db, table: testenv.TableName(t)}
	if b.pooled != nil {
		e.storeDB = b.pooled(t)
	}
	if b.pgx {
		e.pool = testenv.PostgresPool(t)
	}
	e.store = e.with(t, fastConfig())
	require.NoError(t, e.store.Migrate(context.Background()))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + e.table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + e.table + `_relays`) })
	pub, err := outbox.NewPublisher(e.store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	e.pub = pub
	return e
}

// with returns a store on the test's table with cfg (its Table is set
// here): the relay built on it runs by cfg.
func (e *relayEnv) with(t *testing.T, cfg config.Config) *outbox.SQLStore {
	t.Helper()
	cfg.Table = e.table
	if e.backend.listenURL != "" {
		cfg.ListenURL = e.backend.listenURL
	}
	if e.pool != nil {
		store, err := outbox.NewPgxStore(e.pool, outbox.PgxStoreConfig{Outbox: cfg}, nil)
		require.NoError(t, err)
		return store
	}
	store, err := outbox.NewSQLStore(e.storeDB, outbox.SQLStoreConfig{Dialect: e.backend.dialect, Outbox: cfg}, nil)
	require.NoError(t, err)
	return store
}

// fastConfig polls often and backs off briefly, so tests finish quickly.
func fastConfig() config.Config {
	return config.Config{
		PollingInterval: 10 * time.Millisecond,
		RetryBackoffMin: 5 * time.Millisecond,
		RetryBackoffMax: 20 * time.Millisecond,
		ClaimTimeout:    30 * time.Second,
	}
}

// publish commits n messages on topic, with keyOf(i) as partition key when
// keyOf is not nil, and returns them in order.
func (e *relayEnv) publish(t *testing.T, topic string, n int, keyOf func(i int) string) []*message.Message {
	t.Helper()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"n":`+strconv.Itoa(i)+`}`))
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
		if keyOf != nil {
			msgs[i].Metadata.Set(outbox.PartitionKeyMetadataKey, keyOf(i))
		}
	}
	for start := 0; start < n; start += 500 {
		require.NoError(t, e.pub.Publish(topic, msgs[start:min(start+500, n)]...))
	}
	return msgs
}

type rowState struct {
	State     string
	Attempts  int
	LastError sql.NullString
	Claimed   bool
}

func (e *relayEnv) row(t *testing.T, uuid string) (rowState, bool) {
	t.Helper()
	var r rowState
	q := `SELECT state, attempts, last_error, claim_token IS NOT NULL FROM ` + e.table + ` WHERE uuid = ` + placeholder(e.backend.dialect)
	err := e.db.QueryRow(q, uuid).Scan(&r.State, &r.Attempts, &r.LastError, &r.Claimed)
	if err == sql.ErrNoRows {
		return r, false
	}
	require.NoError(t, err)
	return r, true
}

func (e *relayEnv) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRow(`SELECT count(*) FROM `+e.table+` WHERE `+where).Scan(&n))
	return n
}

func placeholder(d outbox.Dialect) string {
	if d == outbox.PostgreSQL {
		return "$1"
	}
	return "?"
}

// waitFor polls cond (a cheap query) until it holds or the timeout ends;
// it waits on a ticker channel, not a fixed sleep.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}
