package watermilloutbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"
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

func TestPublishCommitStoresExactly(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{})

	// Binary payload with a NUL and invalid UTF-8; metadata with unicode.
	payload := []byte{0x00, 0xff, 0xfe, 'h', 'i', 0x00}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.Metadata.Set("trace", "ünïcode \"quoted\"")
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "order-42")
	plain := message.NewMessage(watermill.NewUUID(), []byte(`{"a":1}`))

	tx := begin(t, db)
	require.NoError(t, pub.WithTx(tx).Publish("orders.created", msg, plain))
	require.NoError(t, tx.Commit())

	rows := readRows(t, db, table)
	require.Len(t, rows, 2)
	require.Equal(t, msg.UUID, rows[0].UUID)
	require.Equal(t, "orders.created", rows[0].Topic)
	require.Equal(t, payload, rows[0].Payload)
	require.Equal(t, msg.Metadata, rows[0].Metadata)
	require.Equal(t, sql.NullString{String: "order-42", Valid: true}, rows[0].Key)
	require.Equal(t, "pending", rows[0].State)
	require.Zero(t, rows[0].Attempts)
	require.Equal(t, plain.UUID, rows[1].UUID)
	require.False(t, rows[1].Key.Valid, "no partition key is NULL, not empty")
	require.Equal(t, []byte(`{"a":1}`), rows[1].Payload)
}

func TestPublishRollbackStoresNothing(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{})
	tx := begin(t, db)
	require.NoError(t, pub.WithTx(tx).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	require.NoError(t, tx.Rollback())
	require.Empty(t, readRows(t, db, table))
}

func TestPublishContextCarriedTx(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{})

	tx := begin(t, db)
	msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
	msg.SetContext(outbox.ContextWithTx(context.Background(), tx))
	// Through the plain interface, as code holding a message.Publisher does.
	var p message.Publisher = pub
	require.NoError(t, p.Publish("t", msg))

	// Not visible outside the transaction before commit.
	require.Empty(t, readRows(t, db, table))
	require.NoError(t, tx.Commit())
	require.Len(t, readRows(t, db, table), 1)
}

func TestPublishManyMessagesIsAtomic(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{})

	// More than one INSERT statement's worth, still one transaction.
	msgs := make([]*message.Message, 2500)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprint(i)))
	}
	tx := begin(t, db)
	require.NoError(t, pub.WithTx(tx).Publish("bulk", msgs...))
	require.NoError(t, tx.Rollback())
	require.Empty(t, readRows(t, db, table))

	tx = begin(t, db)
	require.NoError(t, pub.WithTx(tx).Publish("bulk", msgs...))
	require.NoError(t, tx.Commit())
	rows := readRows(t, db, table)
	require.Len(t, rows, len(msgs))
	for i, r := range rows {
		require.Equal(t, msgs[i].UUID, r.UUID, "order within one Publish is kept")
	}

	// One bad message among good ones writes none of them.
	bad := message.NewMessage(watermill.NewUUID(), nil)
	bad.Metadata.Set("Authorization", "Bearer x")
	tx = begin(t, db)
	err := pub.WithTx(tx).Publish("bulk", message.NewMessage(watermill.NewUUID(), nil), bad)
	require.ErrorIs(t, err, outbox.ErrForbiddenMetadata)
	require.NoError(t, tx.Commit())
	require.Len(t, readRows(t, db, table), len(msgs))
}

func TestPublishConcurrentTransactions(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{})
	const workers, perWorker = 16, 100

	want := make(map[string]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				tx, err := db.Begin()
				if err != nil {
					errs <- err
					return
				}
				msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
				if err := pub.WithTx(tx).Publish("concurrent", msg); err != nil {
					_ = tx.Rollback()
					errs <- err
					return
				}
				if err := tx.Commit(); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[msg.UUID] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	got := make(map[string]bool)
	for _, r := range readRows(t, db, table) {
		require.False(t, got[r.UUID], "stored twice: %s", r.UUID)
		got[r.UUID] = true
	}
	require.Equal(t, want, got)
	require.Len(t, got, workers*perWorker)
}

func TestPublishAutoCommit(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutbox(t, outbox.PublisherConfig{AutoCommit: true})
	require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	require.Len(t, readRows(t, db, table), 1)
}

func TestPublishBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	db, pub, table := pgOutboxWith(t, config.Config{MaxPayloadBytes: 8}, outbox.PublisherConfig{})
	newMsg := func() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("x")) }

	t.Run("no transaction", func(t *testing.T) {
		require.ErrorIs(t, pub.Publish("t", newMsg()), outbox.ErrNoTransaction)
		require.ErrorIs(t, pub.WithTx(nil).Publish("t", newMsg()), outbox.ErrNoTransaction)
	})
	t.Run("committed transaction", func(t *testing.T) {
		tx := begin(t, db)
		require.NoError(t, tx.Commit())
		require.ErrorIs(t, pub.WithTx(tx).Publish("t", newMsg()), sql.ErrTxDone)
	})
	t.Run("rolled back transaction", func(t *testing.T) {
		tx := begin(t, db)
		require.NoError(t, tx.Rollback())
		msg := newMsg()
		msg.SetContext(outbox.ContextWithTx(context.Background(), tx))
		require.ErrorIs(t, pub.Publish("t", msg), sql.ErrTxDone)
	})
	t.Run("different transactions in one call", func(t *testing.T) {
		a, b := newMsg(), newMsg()
		a.SetContext(outbox.ContextWithTx(context.Background(), begin(t, db)))
		b.SetContext(outbox.ContextWithTx(context.Background(), begin(t, db)))
		require.ErrorContains(t, pub.Publish("t", a, b), "different transactions")
	})
	for _, topic := range []string{"", "with space", "tab\t", "nl\n", string([]byte{0xff}), string(make([]byte, 256))} {
		t.Run(fmt.Sprintf("topic %q", topic), func(t *testing.T) {
			tx := begin(t, db)
			require.ErrorIs(t, pub.WithTx(tx).Publish(topic, newMsg()), outbox.ErrInvalidTopic)
			require.NoError(t, tx.Commit())
		})
	}
	t.Run("payload over the limit", func(t *testing.T) {
		tx := begin(t, db)
		err := pub.WithTx(tx).Publish("t", message.NewMessage(watermill.NewUUID(), make([]byte, 9)))
		require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		require.NoError(t, tx.Commit())
	})
	t.Run("authorization metadata in any case", func(t *testing.T) {
		for _, k := range []string{"authorization", "Authorization", "AUTHORIZATION"} {
			msg := newMsg()
			msg.Metadata.Set(k, "secret")
			tx := begin(t, db)
			require.ErrorIs(t, pub.WithTx(tx).Publish("t", msg), outbox.ErrForbiddenMetadata)
			require.NoError(t, tx.Commit())
		}
	})
	t.Run("nil message", func(t *testing.T) {
		tx := begin(t, db)
		require.Error(t, pub.WithTx(tx).Publish("t", nil))
	})
	t.Run("after close", func(t *testing.T) {
		_, closing, _ := pgOutbox(t, outbox.PublisherConfig{})
		tx := begin(t, db)
		bound := closing.WithTx(tx)
		require.NoError(t, closing.Close())
		require.NoError(t, closing.Close(), "Close is idempotent")
		require.ErrorIs(t, closing.Publish("t", newMsg()), outbox.ErrClosed)
		require.ErrorIs(t, bound.Publish("t", newMsg()), outbox.ErrClosed)

		own := pub.WithTx(tx)
		require.NoError(t, own.Close())
		require.ErrorIs(t, own.Publish("t", newMsg()), outbox.ErrClosed)
	})

	require.Empty(t, readRows(t, db, table))
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
