package watermilloutbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

type storedRow struct {
	UUID, Topic string
	Key         sql.NullString
	Payload     []byte
	Metadata    message.Metadata
	State       string
	Attempts    int
}

// newStore gives a test its own migrated table on db, dropped when it
// ends, and the store of it with cfg (cfg.Table is set here).
func newStore(t *testing.T, db *sql.DB, dialect outbox.Dialect, cfg config.Config) *outbox.SQLStore {
	t.Helper()
	cfg.Table = testenv.TableName(t)
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table + `_relays`) })
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: dialect, Outbox: cfg}, nil)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	return store
}

// migrate runs Migrate for table on db, through a store.
func migrate(ctx context.Context, db *sql.DB, d outbox.Dialect, table string) error {
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: d, Outbox: config.Config{Table: table}}, nil)
	if err != nil {
		return err
	}
	return store.Migrate(ctx)
}

// migratedTable gives a test its own table on db, dropped when it ends.
func migratedTable(t *testing.T, db *sql.DB, dialect outbox.Dialect) string {
	t.Helper()
	return newStore(t, db, dialect, config.Config{}).Config().Table
}

// pgOutbox gives a test its own migrated table and a publisher on it.
func pgOutbox(t *testing.T, pcfg outbox.PublisherConfig) (*sql.DB, *outbox.Publisher, string) {
	t.Helper()
	return pgOutboxWith(t, config.Config{}, pcfg)
}

// pgOutboxWith is pgOutbox with outbox settings.
func pgOutboxWith(t *testing.T, cfg config.Config, pcfg outbox.PublisherConfig) (*sql.DB, *outbox.Publisher, string) {
	t.Helper()
	db := testenv.Postgres(t)
	store := newStore(t, db, outbox.PostgreSQL, cfg)
	pub, err := outbox.NewPublisher(store, pcfg, watermill.NopLogger{})
	require.NoError(t, err)
	return db, pub, store.Config().Table
}

func readRows(t *testing.T, db *sql.DB, table string) []storedRow {
	t.Helper()
	rows, err := db.Query(`SELECT uuid, topic, partition_key, payload, metadata, state, attempts FROM ` + table + ` ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []storedRow
	for rows.Next() {
		var r storedRow
		var md []byte
		require.NoError(t, rows.Scan(&r.UUID, &r.Topic, &r.Key, &r.Payload, &md, &r.State, &r.Attempts))
		require.NoError(t, json.Unmarshal(md, &r.Metadata))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func begin(t *testing.T, db *sql.DB) *sql.Tx {
	t.Helper()
	tx, err := db.Begin()
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

func TestNewStoreInvalidConfig(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	for name, c := range map[string]outbox.SQLStoreConfig{
		"no dialect":       {Outbox: config.Config{Table: "x"}},
		"unknown dialect":  {Dialect: "oracle"},
		"injection":        {Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: "x; DROP TABLE y"}},
		"quoted":           {Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: `"a"`}},
		"space":            {Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: "a b"}},
		"three parts":      {Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: "a.b.c"}},
		"negative payload": {Dialect: outbox.PostgreSQL, Outbox: config.Config{MaxPayloadBytes: -1}},
	} {
		_, err := outbox.NewSQLStore(db, c, nil)
		require.ErrorContains(t, err, "invalid config", name)
	}
	_, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: "x; DROP TABLE y"}}, nil)
	require.ErrorIs(t, err, outbox.ErrInvalidTableName)
	_, err = outbox.NewSQLStore(nil, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL}, nil)
	require.ErrorContains(t, err, "db is nil")
	_, err = outbox.NewPublisher(nil, outbox.PublisherConfig{}, nil)
	require.ErrorContains(t, err, "store is nil")
}
