// Command postgres-kafka is a small order service: it writes orders and their
// OrderPlaced events in one PostgreSQL transaction each, a few per second, and
// relays the events to Kafka through a forwarder attached to the service's own
// message.Router, so the router's middlewares apply to the relay.
//
//	docker compose up -d postgres kafka && go run ./_examples/postgres-kafka
//
// OUTBOX_DATABASE_URL and OUTBOX_KAFKA_BROKERS (comma-separated) override the
// defaults; the OUTBOX_* relay settings of package config apply. It runs until
// SIGINT/SIGTERM, or for -duration. Events committed after the last poll stay
// in the outbox and are relayed at the next start.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
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

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func main() {
	duration := flag.Duration("duration", 0, "stop after this long; 0 runs until SIGINT/SIGTERM")
	flag.Parse()
	if err := run(*duration); err != nil {
		fmt.Fprintln(os.Stderr, "postgres-kafka: "+strings.ReplaceAll(err.Error(), "\n", "; "))
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
		cfg.Table = "kafka_example_outbox"
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

	brokers := strings.Split(getenv("OUTBOX_KAFKA_BROKERS", "localhost:9092"), ",")
	kafkaPub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: brokers}, logger)
	if err != nil {
		return fmt.Errorf("OUTBOX_KAFKA_BROKERS: %w", err)
	}
	defer kafkaPub.Close()

	// The service's router, with its own middlewares: the forwarder's
	// handler records whether Kafka took each message, and the row follows
	// that record whatever a middleware makes of the ack.
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return err
	}
	router.AddMiddleware(logRelay(logger))
	fwd, err := forwarder.NewForwarder(store, kafkaPub, forwarder.Config{Router: router}, logger)
	if err != nil {
		return err
	}
	defer fwd.Close() // after the router stopped: releases the claims still held

	// Notifier: the relay in this process hears of each commit at once.
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		return err
	}
	routerErr := make(chan error, 1)
	go func() { routerErr <- router.Run(ctx) }() // an attached router is ours to run

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
		case err := <-routerErr:
			return fmt.Errorf("router stopped: %w", err)
		case <-ctx.Done():
		}
	}
	if err := router.Close(); err != nil {
		return err
	}
	fmt.Printf("postgres-kafka: placed %d orders\n", placed)
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
	// A customer's events reach Kafka in order, with the customer as the key.
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, customer)
	if err := pub.WithTx(tx).Publish("orders.placed", msg); err != nil {
		return err
	}
	return tx.Commit()
}

// logRelay logs each relayed message's outcome (the router logs errors too).
func logRelay(logger watermill.LoggerAdapter) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			fields := watermill.LogFields{"uuid": msg.UUID, "topic": msg.Metadata.Get(outbox.TopicMetadataKey),
				"attempt": msg.Metadata.Get(outbox.AttemptMetadataKey)}
			if err != nil {
				fields["error"] = err.Error()
				logger.Info("Relay failed, the outbox retries it", fields)
			} else {
				logger.Info("Relayed", fields)
			}
			return out, err
		}
	}
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
