package watermilloutbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// pgDriver is how a PostgreSQL service talks to its database: through
// database/sql (pgx's stdlib driver, a *sql.Tx) or through pgx itself (a
// pgxpool.Pool, a pgx.Tx). The write-side tests run once for each, through
// one body.
type pgDriver struct {
	name string
	// open connects a test's service, closed when t ends.
	open func(t *testing.T) service
}

// service is a test's connection to PostgreSQL through one driver.
type service struct {
	name string
	// store returns the store of a fresh migrated table, with cfg.
	store func(t *testing.T, cfg config.Config) *outbox.SQLStore
	// begin starts a transaction; it is rolled back when t ends unless
	// finished before.
	begin func(t *testing.T) serviceTx
}

// serviceTx is a transaction of the service, of either driver.
type serviceTx struct {
	bind     func(p *outbox.Publisher) message.Publisher // WithTx, WithPgxTx
	in       func(ctx context.Context) context.Context   // ContextWithTx, ContextWithPgxTx
	commit   func() error
	rollback func() error
}

var pgDrivers = []pgDriver{
	{
		name: "database/sql",
		open: func(t *testing.T) service {
			db := testenv.Postgres(t)
			return service{
				store: func(t *testing.T, cfg config.Config) *outbox.SQLStore {
					return newStore(t, db, outbox.PostgreSQL, cfg)
				},
				begin: func(t *testing.T) serviceTx {
					tx := begin(t, db)
					return serviceTx{
						bind:     func(p *outbox.Publisher) message.Publisher { return p.WithTx(tx) },
						in:       func(ctx context.Context) context.Context { return outbox.ContextWithTx(ctx, tx) },
						commit:   tx.Commit,
						rollback: tx.Rollback,
					}
				},
			}
		},
	},
	{
		name: "pgx",
		open: func(t *testing.T) service {
			pool := testenv.PostgresPool(t)
			ctx := context.Background()
			return service{
				store: func(t *testing.T, cfg config.Config) *outbox.SQLStore {
					cfg.Table = testenv.TableName(t)
					t.Cleanup(func() { _, _ = pool.Exec(ctx, `DROP TABLE IF EXISTS `+cfg.Table) })
					t.Cleanup(func() { _, _ = pool.Exec(ctx, `DROP TABLE IF EXISTS `+cfg.Table+`_relays`) })
					store, err := outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: cfg}, nil)
					require.NoError(t, err)
					require.NoError(t, store.Migrate(ctx))
					return store
				},
				begin: func(t *testing.T) serviceTx {
					tx, err := pool.Begin(ctx)
					require.NoError(t, err)
					t.Cleanup(func() { _ = tx.Rollback(ctx) })
					return serviceTx{
						bind:     func(p *outbox.Publisher) message.Publisher { return p.WithPgxTx(tx) },
						in:       func(ctx context.Context) context.Context { return outbox.ContextWithPgxTx(ctx, tx) },
						commit:   func() error { return tx.Commit(ctx) },
						rollback: func() error { return tx.Rollback(ctx) },
					}
				},
			}
		},
	},
}

// forEachDriver runs body once per driver, in parallel, with the service
// and a publisher on a table of its own.
func forEachDriver(t *testing.T, cfg config.Config, pcfg outbox.PublisherConfig, body func(t *testing.T, d service, pub *outbox.Publisher, table string)) {
	t.Helper()
	for _, drv := range pgDrivers {
		t.Run(drv.name, func(t *testing.T) {
			t.Parallel()
			d := drv.open(t)
			d.name = drv.name
			store := d.store(t, cfg)
			pub, err := outbox.NewPublisher(store, pcfg, watermill.NopLogger{})
			require.NoError(t, err)
			body(t, d, pub, store.Config().Table)
		})
	}
}

// rowsOf reads a table back through database/sql, whatever wrote it.
func rowsOf(t *testing.T, table string) []storedRow {
	t.Helper()
	return readRows(t, testenv.Postgres(t), table)
}

func TestPublishCommitStoresExactly(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		// Binary payload with a NUL and invalid UTF-8; metadata with unicode.
		payload := []byte{0x00, 0xff, 0xfe, 'h', 'i', 0x00}
		msg := message.NewMessage(watermill.NewUUID(), payload)
		msg.Metadata.Set("trace", "ünïcode \"quoted\"")
		msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "order-42")
		plain := message.NewMessage(watermill.NewUUID(), []byte(`{"a":1}`))

		tx := d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("orders.created", msg, plain))
		require.NoError(t, tx.commit())

		rows := rowsOf(t, table)
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
	})
}

func TestPublishRollbackStoresNothing(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		tx := d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		require.NoError(t, tx.rollback())
		require.Empty(t, rowsOf(t, table))
	})
}

func TestPublishContextCarriedTx(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		tx := d.begin(t)
		msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
		msg.SetContext(tx.in(context.Background()))
		// Through the plain interface, as code holding a message.Publisher does.
		var p message.Publisher = pub
		require.NoError(t, p.Publish("t", msg))

		// Not visible outside the transaction before commit.
		require.Empty(t, rowsOf(t, table))
		require.NoError(t, tx.commit())
		require.Len(t, rowsOf(t, table), 1)
	})
}

func TestPublishManyMessagesIsAtomic(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		// More than one INSERT statement's worth, still one transaction.
		msgs := make([]*message.Message, 2500)
		for i := range msgs {
			msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprint(i)))
		}
		tx := d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("bulk", msgs...))
		require.NoError(t, tx.rollback())
		require.Empty(t, rowsOf(t, table))

		tx = d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("bulk", msgs...))
		require.NoError(t, tx.commit())
		rows := rowsOf(t, table)
		require.Len(t, rows, len(msgs))
		for i, r := range rows {
			require.Equal(t, msgs[i].UUID, r.UUID, "order within one Publish is kept")
		}

		// One bad message among good ones writes none of them.
		bad := message.NewMessage(watermill.NewUUID(), nil)
		bad.Metadata.Set("Authorization", "Bearer x")
		tx = d.begin(t)
		err := tx.bind(pub).Publish("bulk", message.NewMessage(watermill.NewUUID(), nil), bad)
		require.ErrorIs(t, err, outbox.ErrForbiddenMetadata)
		require.NoError(t, tx.commit())
		require.Len(t, rowsOf(t, table), len(msgs))
	})
}

func TestPublishConcurrentTransactions(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		const workers, perWorker = 16, 100
		// Begun here, a few ahead of the workers: require is for the
		// test's goroutine, and every open transaction holds a connection.
		txs := make(chan serviceTx, workers)
		want := make(map[string]bool)
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for tx := range txs {
					msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
					if err := tx.bind(pub).Publish("concurrent", msg); err != nil {
						errs <- err
						return
					}
					if err := tx.commit(); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					want[msg.UUID] = true
					mu.Unlock()
				}
			}()
		}
		for range workers * perWorker {
			txs <- d.begin(t)
		}
		close(txs)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		got := make(map[string]bool)
		for _, r := range rowsOf(t, table) {
			require.False(t, got[r.UUID], "stored twice: %s", r.UUID)
			got[r.UUID] = true
		}
		require.Equal(t, want, got)
		require.Len(t, got, workers*perWorker)
	})
}

func TestPublishAutoCommit(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{AutoCommit: true}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		require.Len(t, rowsOf(t, table), 1)
	})
}

func TestPublishBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{MaxPayloadBytes: 8}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		newMsg := func() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("x")) }

		t.Run("no transaction", func(t *testing.T) {
			require.ErrorIs(t, pub.Publish("t", newMsg()), outbox.ErrNoTransaction)
			require.ErrorIs(t, pub.WithTx(nil).Publish("t", newMsg()), outbox.ErrNoTransaction)
			require.ErrorIs(t, pub.WithPgxTx(nil).Publish("t", newMsg()), outbox.ErrNoTransaction)
		})
		t.Run("committed transaction", func(t *testing.T) {
			tx := d.begin(t)
			require.NoError(t, tx.commit())
			require.ErrorIs(t, tx.bind(pub).Publish("t", newMsg()), sql.ErrTxDone)
		})
		t.Run("rolled back transaction", func(t *testing.T) {
			tx := d.begin(t)
			require.NoError(t, tx.rollback())
			msg := newMsg()
			msg.SetContext(tx.in(context.Background()))
			err := pub.Publish("t", msg)
			require.ErrorIs(t, err, sql.ErrTxDone)
			if d.name == "pgx" {
				require.ErrorIs(t, err, pgx.ErrTxClosed)
			}
		})
		t.Run("different transactions in one call", func(t *testing.T) {
			a, b := newMsg(), newMsg()
			a.SetContext(d.begin(t).in(context.Background()))
			b.SetContext(d.begin(t).in(context.Background()))
			require.ErrorContains(t, pub.Publish("t", a, b), "different transactions")
		})
		for _, topic := range []string{"", "with space", "tab\t", "nl\n", string([]byte{0xff}), string(make([]byte, 256))} {
			t.Run(fmt.Sprintf("topic %q", topic), func(t *testing.T) {
				tx := d.begin(t)
				require.ErrorIs(t, tx.bind(pub).Publish(topic, newMsg()), outbox.ErrInvalidTopic)
				require.NoError(t, tx.commit())
			})
		}
		t.Run("payload over the limit", func(t *testing.T) {
			tx := d.begin(t)
			err := tx.bind(pub).Publish("t", message.NewMessage(watermill.NewUUID(), make([]byte, 9)))
			require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
			require.NoError(t, tx.commit())
		})
		t.Run("authorization metadata in any case", func(t *testing.T) {
			for _, k := range []string{"authorization", "Authorization", "AUTHORIZATION"} {
				msg := newMsg()
				msg.Metadata.Set(k, "secret")
				tx := d.begin(t)
				require.ErrorIs(t, tx.bind(pub).Publish("t", msg), outbox.ErrForbiddenMetadata)
				require.NoError(t, tx.commit())
			}
		})
		t.Run("nil message", func(t *testing.T) {
			tx := d.begin(t)
			require.Error(t, tx.bind(pub).Publish("t", nil))
		})
		t.Run("after close", func(t *testing.T) {
			closing, err := outbox.NewPublisher(d.store(t, config.Config{}), outbox.PublisherConfig{}, nil)
			require.NoError(t, err)
			tx := d.begin(t)
			bound := tx.bind(closing)
			require.NoError(t, closing.Close())
			require.NoError(t, closing.Close(), "Close is idempotent")
			require.ErrorIs(t, closing.Publish("t", newMsg()), outbox.ErrClosed)
			require.ErrorIs(t, bound.Publish("t", newMsg()), outbox.ErrClosed)

			own := tx.bind(pub)
			require.NoError(t, own.Close())
			require.ErrorIs(t, own.Publish("t", newMsg()), outbox.ErrClosed)
		})

		require.Empty(t, rowsOf(t, table))
	})
}

// TestPublisherNotifiesOnCommit: the NOTIFY travels with the transaction:
// delivered when it commits, on the table's channel.
func TestPublisherNotifiesOnCommit(t *testing.T) {
	t.Parallel()
	// The shortest interval, let pass before the second Publish: both
	// notify, so the rolled-back transaction cannot hold the interval
	// against the committed one.
	const interval = 100 * time.Microsecond
	forEachDriver(t, config.Config{NotifyInterval: interval}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, testenv.PostgresDSN())
		require.NoError(t, err)
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, "LISTEN "+pgx.Identifier{sqlident.NotifyChannel(table)}.Sanitize())
		require.NoError(t, err)

		tx := d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
		require.NoError(t, tx.rollback())
		for start := time.Now(); time.Since(start) <= interval; {
		}
		tx = d.begin(t)
		require.NoError(t, tx.bind(pub).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("y"))))
		require.NoError(t, tx.commit())

		n, err := conn.WaitForNotification(ctx)
		require.NoError(t, err)
		require.Equal(t, sqlident.NotifyChannel(table), n.Channel)
	})
}

// A plain cqrs.EventBus over the outbox Publisher writes in the transaction
// its ctx carries, of either driver: the Publisher is a drop-in
// message.Publisher.
func TestCQRSEventBusWritesInTheCallersTx(t *testing.T) {
	t.Parallel()
	forEachDriver(t, config.Config{}, outbox.PublisherConfig{}, func(t *testing.T, d service, pub *outbox.Publisher, table string) {
		bus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
			Marshaler: cqrs.JSONMarshaler{GenerateName: cqrs.StructName},
			GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) {
				return "cqrs." + p.EventName, nil
			},
		})
		require.NoError(t, err)

		tx := d.begin(t)
		require.NoError(t, bus.Publish(tx.in(context.Background()), ebOrderPlaced{OrderID: "gone", Total: 1}))
		require.NoError(t, tx.rollback())
		require.Empty(t, rowsOf(t, table), "rolled back with the transaction")

		tx = d.begin(t)
		require.NoError(t, bus.Publish(tx.in(context.Background()), ebOrderPlaced{OrderID: "o", Total: 5}))
		require.NoError(t, tx.commit())
		rows := rowsOf(t, table)
		require.Len(t, rows, 1)
		require.Equal(t, "cqrs.ebOrderPlaced", rows[0].Topic)
		require.JSONEq(t, `{"order_id":"o","total":5}`, string(rows[0].Payload))
	})
}
