package watermilloutbox_test

import (
	"context"
	"database/sql"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// CartCheckedOut is consumed by other services, so it is an integration event:
// it goes through the outbox.
type CartCheckedOut struct {
	CartID string `json:"cart_id"`
	Total  int    `json:"total"`
}

func (CartCheckedOut) IntegrationEvent() {}

// PartitionKey keeps one cart's events in order; on Kafka it is the key.
func (e CartCheckedOut) PartitionKey() string { return e.CartID }

// Publishing an event in the transaction that changes the state it describes.
// It needs a PostgreSQL server with the outbox table (Migrate), so it is
// compiled but not run.
func ExampleEventBus_PublishTx() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		panic(err)
	}
	store, err := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{Dialect: watermilloutbox.PostgreSQL}, nil)
	if err != nil {
		panic(err)
	}
	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, nil)
	if err != nil {
		panic(err)
	}
	bus, err := watermilloutbox.NewEventBus(pub, watermilloutbox.EventBusConfig{}, nil)
	if err != nil {
		panic(err)
	}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `UPDATE carts SET checked_out_at = now() WHERE id = $1`, "cart-7"); err != nil {
		panic(err)
	}
	// Written to the outbox in tx: if tx rolls back, so does the event.
	if err := bus.PublishTx(ctx, tx, CartCheckedOut{CartID: "cart-7", Total: 4200}); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil { // the relay sees the event only now
		panic(err)
	}
}
