package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	_ "modernc.org/sqlite"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// A consumer that credits an account for each payment and emits a receipt
// through its own outbox, all in one transaction: the payment, delivered
// twice, is applied once, and one receipt is written. It runs on SQLite; a
// gochannel stands in for the broker.
func ExampleInbox_Middleware() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, cleanup := exampleDB()
	defer cleanup()
	_, _ = db.ExecContext(ctx, `CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)
	_, _ = db.ExecContext(ctx, `INSERT INTO accounts VALUES ('acct-1', 0)`)

	// The consumer's outbox, for what it emits.
	store, _ := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{Dialect: watermilloutbox.SQLite, Outbox: config.Default()}, nil)
	_ = store.Migrate(ctx)
	pub, _ := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, nil)

	done := make(exampleOutcomes, 2) // an Observer, to know when both deliveries are through
	in, err := inbox.New(db, inbox.Config{Consumer: "ledger", Dialect: watermilloutbox.SQLite, Outbox: pub, Observer: done}, nil)
	if err != nil {
		panic(err)
	}
	if err := in.Migrate(ctx); err != nil {
		panic(err)
	}

	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 2}, watermill.NopLogger{})
	router, _ := message.NewRouter(message.RouterConfig{}, nil)
	router.AddMiddleware(in.Middleware) // after Retry and PoisonQueue, if any
	// The outbox Publisher as the handler's publisher: what the handler
	// returns goes into the outbox, under "receipts", in its transaction.
	router.AddHandler("ledger", "payments", broker, "receipts", pub, func(msg *message.Message) ([]*message.Message, error) {
		tx, _ := watermilloutbox.TxFromContext(msg.Context())
		if _, err := tx.ExecContext(msg.Context(), `UPDATE accounts SET balance = balance + 10 WHERE id = 'acct-1'`); err != nil {
			return nil, err
		}
		return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("receipt"))}, nil
	})
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	payment := message.NewMessage(watermill.NewUUID(), []byte(`{"account":"acct-1","amount":10}`))
	_ = broker.Publish("payments", payment)
	fmt.Println(<-done)
	_ = broker.Publish("payments", payment) // redelivered
	fmt.Println(<-done)

	var balance int
	_ = db.QueryRowContext(ctx, `SELECT balance FROM accounts`).Scan(&balance)
	st, _ := store.Stats(ctx)
	fmt.Println("balance:", balance, "receipts in the outbox:", st.Topics[0].Pending)
	// Output:
	// handled
	// duplicate
	// balance: 10 receipts in the outbox: 1
}

// PaymentReceived is consumed by an event handler.
type PaymentReceived struct {
	Account string `json:"account"`
	Amount  int    `json:"amount"`
}

// ReceiptIssued is what the handler emits.
type ReceiptIssued struct {
	Account string `json:"account"`
}

// A cqrs.EventProcessor handler: its ctx carries the delivery's transaction,
// so its writes and the events it publishes through a cqrs.EventBus over the
// outbox Publisher commit together, or not at all.
func ExampleInbox_Middleware_eventProcessor() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, cleanup := exampleDB()
	defer cleanup()
	_, _ = db.ExecContext(ctx, `CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)
	_, _ = db.ExecContext(ctx, `INSERT INTO accounts VALUES ('acct-1', 0)`)
	store, _ := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{Dialect: watermilloutbox.SQLite, Outbox: config.Default()}, nil)
	_ = store.Migrate(ctx)
	pub, _ := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, nil)
	done := make(exampleOutcomes, 2)
	in, _ := inbox.New(db, inbox.Config{Consumer: "ledger", Dialect: watermilloutbox.SQLite, Observer: done}, nil)
	_ = in.Migrate(ctx)

	marshaler := cqrs.JSONMarshaler{}
	bus, _ := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) { return p.EventName, nil },
		Marshaler:            marshaler,
	})
	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 2}, watermill.NopLogger{})
	router, _ := message.NewRouter(message.RouterConfig{}, nil)
	router.AddMiddleware(in.Middleware)
	processor, _ := cqrs.NewEventProcessorWithConfig(router, cqrs.EventProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.EventProcessorGenerateSubscribeTopicParams) (string, error) { return p.EventName, nil },
		SubscriberConstructor: func(cqrs.EventProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return broker, nil
		},
		Marshaler: marshaler,
	})
	_ = processor.AddHandlers(cqrs.NewEventHandler("ledger", func(ctx context.Context, e *PaymentReceived) error {
		tx, _ := watermilloutbox.TxFromContext(ctx)
		if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance + ? WHERE id = ?`, e.Amount, e.Account); err != nil {
			return err
		}
		return bus.Publish(ctx, &ReceiptIssued{Account: e.Account}) // into the outbox, in ctx's transaction
	}))
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	payment, _ := marshaler.Marshal(&PaymentReceived{Account: "acct-1", Amount: 10})
	_ = broker.Publish(marshaler.Name(&PaymentReceived{}), payment)
	fmt.Println(<-done)
	_ = broker.Publish(marshaler.Name(&PaymentReceived{}), payment) // the same message again
	fmt.Println(<-done)

	var balance int
	_ = db.QueryRowContext(ctx, `SELECT balance FROM accounts`).Scan(&balance)
	st, _ := store.Stats(ctx)
	fmt.Println("balance:", balance, "receipts in the outbox:", st.Topics[0].Pending)
	// Output:
	// handled
	// duplicate
	// balance: 10 receipts in the outbox: 1
}

// Purge deletes the records past the dedup window; run it daily, or from
// the command line ('watermill-outbox inbox purge').
func ExampleInbox_Purge() {
	db, cleanup := exampleDB()
	defer cleanup()
	in, _ := inbox.New(db, inbox.Config{Consumer: "ledger", Dialect: watermilloutbox.SQLite}, nil)
	_ = in.Migrate(context.Background())
	n, err := in.Purge(context.Background())
	fmt.Println(n, err)
	// Output: 0 <nil>
}

// DDL returns the statements for a migration tool.
func ExampleDDL() {
	ddl, _ := inbox.DDL(watermilloutbox.PostgreSQL, "app.inbox")
	fmt.Print(ddl)
	// Output:
	// CREATE TABLE IF NOT EXISTS "app"."inbox" (
	//     consumer     TEXT        NOT NULL,
	//     message_uuid TEXT        NOT NULL,
	//     processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
	//     PRIMARY KEY (consumer, message_uuid)
	// );
	// CREATE INDEX IF NOT EXISTS "inbox_processed_idx" ON "app"."inbox" (consumer, processed_at);
}

type exampleOutcomes chan inbox.Outcome

func (o exampleOutcomes) ObserveDelivery(e inbox.DeliveryEvent) { o <- e.Outcome }

// exampleDB opens a new SQLite database, with one connection as SQLite
// has one writer; cleanup closes and removes it.
func exampleDB() (db *sql.DB, cleanup func()) {
	dir, err := os.MkdirTemp("", "inbox-example")
	if err != nil {
		panic(err)
	}
	db, err = sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?"+watermilloutbox.SQLiteConnParams)
	if err != nil {
		panic(err)
	}
	db.SetMaxOpenConns(1)
	return db, func() {
		_ = db.Close()
		_ = os.RemoveAll(dir)
	}
}
