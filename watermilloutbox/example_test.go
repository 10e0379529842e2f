package watermilloutbox_test

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Publishing inside the transaction that writes the business rows. It needs a
// PostgreSQL server, so it is compiled but not run.
func ExamplePublisher_WithTx() {
	ctx := context.Background()
	var logger watermill.LoggerAdapter = watermill.NewStdLogger(false, false)
	id, total, payload := "order-42", 1999, []byte(`{"order_id":"order-42"}`)

	db, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		panic(err)
	}
	// The dialect, the table (config.DefaultTable here) and every other
	// setting are given once, to the store; the publisher and the relay
	// take them from it.
	store, err := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{
		Dialect: watermilloutbox.PostgreSQL,
		Outbox:  config.Default(), // or config.FromEnv()
	}, logger)
	if err != nil {
		panic(err)
	}
	if err := store.Migrate(ctx); err != nil {
		panic(err)
	}
	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, logger)
	if err != nil {
		panic(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, id, total); err != nil {
		panic(err)
	}

	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, id) // optional: Kafka key, per-key order
	if err := pub.WithTx(tx).Publish("orders.placed", msg); err != nil {
		panic(err) // the event is part of tx: it rolls back with it
	}

	if err := tx.Commit(); err != nil { // the event becomes visible to the relay only now
		panic(err)
	}
}

// A service that uses pgx and no database/sql: the store runs over its
// pgxpool, and the event is published under the pgx.Tx that writes the
// business row. It needs a PostgreSQL server, so it is compiled but not run.
func ExampleNewPgxStore() {
	ctx := context.Background()
	var logger watermill.LoggerAdapter = watermill.NewStdLogger(false, false)
	id, payload := "order-42", []byte(`{"order_id":"order-42"}`)

	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		panic(err)
	}
	store, err := watermilloutbox.NewPgxStore(pool, watermilloutbox.PgxStoreConfig{Outbox: config.Default()}, logger)
	if err != nil {
		panic(err)
	}
	if err := store.Migrate(ctx); err != nil {
		panic(err)
	}
	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, logger)
	if err != nil {
		panic(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id) VALUES ($1)`, id); err != nil {
			return err
		}
		msg := message.NewMessage(watermill.NewUUID(), payload)
		return pub.WithPgxTx(tx).Publish("orders.placed", msg) // rolls back with tx
	})
	if err != nil {
		panic(err)
	}
	// The relay: forwarder.NewForwarder(store, destination, forwarder.Config{}, logger).
}

// DDL returns the statements for a migration tool.
func ExampleDDL() {
	ddl, err := watermilloutbox.DDL(watermilloutbox.PostgreSQL, "app.outbox")
	if err != nil {
		panic(err)
	}
	fmt.Println(ddl[:len("CREATE TABLE IF NOT EXISTS \"app\".\"outbox\"")])
	// Output: CREATE TABLE IF NOT EXISTS "app"."outbox"
}
