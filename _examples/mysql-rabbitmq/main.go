// Command mysql-rabbitmq is a small order service on MySQL (or MariaDB) and
// RabbitMQ that publishes through Watermill's own cqrs.EventBus: the outbox
// Publisher is a drop-in message.Publisher, and the transaction travels in the
// context (watermilloutbox.ContextWithTx), which the event bus copies into
// each message. A forwarder on its own router relays the events to RabbitMQ,
// into the durable queue "orders.OrderPlaced".
//
//	docker compose up -d mysql rabbitmq && go run ./_examples/mysql-rabbitmq
//
// OUTBOX_DATABASE_URL (a go-sql-driver DSN) and OUTBOX_AMQP_URL override the
// defaults; the OUTBOX_* relay settings of package config apply. It runs until
// SIGINT/SIGTERM, or for -duration.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// OrderPlaced is published with cqrs.JSONMarshaler, so any Watermill cqrs
// consumer with the same marshaler reads it back.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	CustomerID string `json:"customer_id"`
	TotalCents int64  `json:"total_cents"`
}

func main() {
	duration := flag.Duration("duration", 0, "stop after this long; 0 runs until SIGINT/SIGTERM")
	flag.Parse()
	if err := run(*duration); err != nil {
		fmt.Fprintln(os.Stderr, "mysql-rabbitmq: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(duration time.Duration) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	logger := watermill.NewSlogLogger(nil)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	db, err := sql.Open("mysql", getenv("OUTBOX_DATABASE_URL", "root@tcp(127.0.0.1:3306)/test"))
	if err != nil {
		return fmt.Errorf("OUTBOX_DATABASE_URL: %w", err)
	}
	defer db.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		return fmt.Errorf("OUTBOX_DATABASE_URL: %w", err)
	}
	// The dialect, the table and every setting are stated once, here: the
	// publisher and the relay take them from the store.
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.MySQL, Outbox: cfg}, logger)
	if err != nil {
		return err
	}
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS orders
		(id VARCHAR(64) PRIMARY KEY, customer_id VARCHAR(64) NOT NULL, total_cents BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create orders: %w", err)
	}

	amqpPub, err := sink.NewAMQPPublisher(sink.AMQPConfig{
		URL: getenv("OUTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		// Nothing consumes this demo's queue: cap it. Every declarer of
		// the queue must use the same arguments.
		QueueArguments: amqp.Table{"x-max-length": int32(10000)},
	}, logger)
	if err != nil {
		return fmt.Errorf("OUTBOX_AMQP_URL: %w", err)
	}
	defer amqpPub.Close()

	fwd, err := forwarder.NewForwarder(store, amqpPub, forwarder.Config{}, logger)
	if err != nil {
		return err
	}
	defer fwd.Close() // stops claiming, lets in-flight publishes finish, releases the rest
	fwdErr := make(chan error, 1)
	go func() { fwdErr <- fwd.Run(ctx) }()

	// Notifier: MySQL has no LISTEN, but the relay in this process hears of
	// each commit at once.
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		return err
	}
	// Plain Watermill cqrs on top of the outbox Publisher.
	eventBus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) {
			return "orders." + p.EventName, nil
		},
		// A customer's events are relayed in the order they were written.
		OnPublish: func(p cqrs.OnEventSendParams) error {
			if ev, ok := p.Event.(*OrderPlaced); ok {
				p.Message.Metadata.Set(outbox.PartitionKeyMetadataKey, ev.CustomerID)
			}
			return nil
		},
		Marshaler: cqrs.JSONMarshaler{GenerateName: cqrs.StructName},
		Logger:    logger,
	})
	if err != nil {
		return err
	}

	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	placed := 0
	for ctx.Err() == nil {
		select {
		case <-tick.C:
			if err := placeOrder(ctx, db, eventBus, placed); err != nil && ctx.Err() == nil {
				return err
			}
			placed++
			logger.Info("Order placed", watermill.LogFields{"orders": placed})
		case err := <-fwdErr:
			return fmt.Errorf("forwarder stopped: %w", err)
		case <-ctx.Done():
		}
	}
	// Run returns once the router has stopped; the end of ctx is the normal
	// way out.
	if err := <-fwdErr; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("forwarder: %w", err)
	}
	fmt.Printf("mysql-rabbitmq: placed %d orders\n", placed)
	return nil
}

// placeOrder writes an order and its event in one transaction: both or neither.
func placeOrder(ctx context.Context, db *sql.DB, eventBus *cqrs.EventBus, n int) error {
	ev := &OrderPlaced{OrderID: watermill.NewUUID(), CustomerID: fmt.Sprintf("customer-%d", n%5), TotalCents: int64(1000 + n%7*250)}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, customer_id, total_cents) VALUES (?, ?, ?)`,
		ev.OrderID, ev.CustomerID, ev.TotalCents); err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	// The event bus knows nothing of the outbox: the transaction rides in
	// the context into the message, where the outbox Publisher finds it.
	if err := eventBus.Publish(outbox.ContextWithTx(ctx, tx), ev); err != nil {
		return err
	}
	return tx.Commit()
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
