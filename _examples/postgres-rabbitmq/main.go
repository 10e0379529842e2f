// Command postgres-rabbitmq is a small order service: it writes orders and
// their OrderPlaced events in one PostgreSQL transaction each, a few per
// second, and a forwarder on its own router relays the events to RabbitMQ,
// into the durable queue "orders.placed".
//
//	docker compose up -d postgres rabbitmq && go run ./_examples/postgres-rabbitmq
//
// OUTBOX_DATABASE_URL and OUTBOX_AMQP_URL override the defaults; the OUTBOX_*
// relay settings of package config apply. It runs until SIGINT/SIGTERM, or
// for -duration. Events committed after the last poll stay in the outbox and
// are relayed at the next start.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const topic = "orders.placed"

func main() {
	duration := flag.Duration("duration", 0, "stop after this long; 0 runs until SIGINT/SIGTERM")
	flag.Parse()
	if err := run(*duration); err != nil {
		fmt.Fprintln(os.Stderr, "postgres-rabbitmq: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(duration time.Duration) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	if os.Getenv("OUTBOX_TABLE") == "" {
		// Its own table, so rows left by this example never leave through
		// another example's broker.
		cfg.Table = "rabbitmq_example_outbox"
	}
	logger := watermill.NewSlogLogger(nil)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	db, err := sql.Open("pgx", getenv("OUTBOX_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"))
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
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, logger)
	if err != nil {
		return err
	}
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS orders
		(id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, total_cents BIGINT NOT NULL)`); err != nil {
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

	// Notifier: the relay in this process hears of each commit at once.
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		return err
	}
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	placed := 0
	for ctx.Err() == nil {
		select {
		case <-tick.C:
			if err := placeOrder(ctx, db, pub, placed); err != nil && ctx.Err() == nil {
				return err
			}
			placed++
			logger.Info("Order placed", watermill.LogFields{"orders": placed})
		case err := <-fwdErr:
			return fmt.Errorf("forwarder stopped: %w", err)
		case <-ctx.Done():
		}
	}
	// Run returns once the router has stopped; a canceled ctx is the
	// normal way out.
	if err := <-fwdErr; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("forwarder: %w", err)
	}
	fmt.Printf("postgres-rabbitmq: placed %d orders\n", placed)
	return nil
}

// placeOrder writes an order and its event in one transaction: both or neither.
func placeOrder(ctx context.Context, db *sql.DB, pub *outbox.Publisher, n int) error {
	id, customer, total := watermill.NewUUID(), fmt.Sprintf("customer-%d", n%5), 1000+n%7*250
	payload, _ := json.Marshal(map[string]any{"order_id": id, "customer_id": customer, "total_cents": total})
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, customer_id, total_cents) VALUES ($1, $2, $3)`,
		id, customer, total); err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	// A customer's events are relayed in the order they were written.
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, customer)
	if err := pub.WithTx(tx).Publish(topic, msg); err != nil {
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
