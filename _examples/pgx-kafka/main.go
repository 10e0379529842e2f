// Command pgx-kafka is an order service that uses pgx (github.com/jackc/pgx/v5)
// and no database/sql: it writes each order and its OrderPlaced event in one
// pgx transaction, and relays the events to Kafka with a forwarder over the
// same pgxpool (claims, acks, LISTEN and all).
//
//	docker compose up -d postgres kafka && go run ./_examples/pgx-kafka
//	scripts/services up postgres kafka && go run ./_examples/pgx-kafka   # without Docker
//	go run ./_examples/pgx-kafka -kfake -duration 3s   # Kafka in process: no broker needed
//
// OUTBOX_DATABASE_URL and OUTBOX_KAFKA_BROKERS (comma-separated) override the
// defaults; the OUTBOX_* relay settings of package config apply. It runs until
// SIGINT/SIGTERM, or for -duration, then prints how many orders it placed and
// how many events reached Kafka.
package main

import (
	"context"
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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const topic = "pgx.orders.placed"

func main() {
	duration := flag.Duration("duration", 0, "stop after this long; 0 runs until SIGINT/SIGTERM")
	inProcess := flag.Bool("kfake", false, "relay to an in-process Kafka (kfake) instead of OUTBOX_KAFKA_BROKERS")
	flag.Parse()
	if err := run(*duration, *inProcess); err != nil {
		fmt.Fprintln(os.Stderr, "pgx-kafka: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(duration time.Duration, inProcess bool) error {
	cfg, err := config.FromEnv()
	if err != nil {
		return err
	}
	if os.Getenv("OUTBOX_TABLE") == "" {
		cfg.Table = "pgx_example_outbox" // its own table: no other example relays its rows
	}
	logger := watermill.NewSlogLogger(nil)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	pool, err := pgxpool.New(ctx, getenv("OUTBOX_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"))
	if err != nil {
		return fmt.Errorf("OUTBOX_DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("OUTBOX_DATABASE_URL: %w", err)
	}
	// The store over the pool: the relay and the publisher built on it need
	// no database/sql.
	store, err := outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: cfg}, logger)
	if err != nil {
		return err
	}
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS pgx_orders
		(id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, total_cents BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create orders: %w", err)
	}

	brokers := strings.Split(getenv("OUTBOX_KAFKA_BROKERS", "localhost:9092"), ",")
	if inProcess {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, topic))
		if err != nil {
			return fmt.Errorf("kfake: %w", err)
		}
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
	}
	run := watermill.NewShortUUID() // marks this run's events on a topic that may hold older ones
	received, stopCounting, err := countEvents(brokers, run)
	if err != nil {
		return err
	}
	kafkaPub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: brokers}, logger)
	if err != nil {
		return fmt.Errorf("OUTBOX_KAFKA_BROKERS: %w", err)
	}
	defer kafkaPub.Close()

	fwd, err := forwarder.NewForwarder(store, kafkaPub, forwarder.Config{}, logger)
	if err != nil {
		return err
	}
	// Notifier: the relay in this process hears of each commit at once.
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		return err
	}
	relayErr := make(chan error, 1)
	go func() { relayErr <- fwd.Run(context.Background()) }()
	<-fwd.Running()

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	placed := 0
	for ctx.Err() == nil {
		select {
		case <-tick.C:
			if err := placeOrder(ctx, pool, pub, run, placed); err != nil && ctx.Err() == nil {
				return err
			}
			placed++
		case err := <-relayErr:
			return fmt.Errorf("relay stopped: %w", err)
		case <-ctx.Done():
		}
	}
	// Give the relay a moment for the last commits, then stop it.
	deadline := time.After(10 * time.Second)
	for received() < placed {
		select {
		case <-deadline:
			return fmt.Errorf("placed %d orders, but only %d events reached Kafka", placed, received())
		case <-time.After(20 * time.Millisecond):
		}
	}
	stopCounting()
	if err := fwd.Close(); err != nil {
		return err
	}
	if err := <-relayErr; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	fmt.Printf("pgx-kafka: placed %d orders, %d events reached Kafka\n", placed, received())
	return nil
}

// placeOrder writes an order and its event in one pgx transaction: both or
// neither.
func placeOrder(ctx context.Context, pool *pgxpool.Pool, pub *outbox.Publisher, run string, n int) error {
	id, customer, total := watermill.NewUUID(), fmt.Sprintf("customer-%d", n%5), 1000+n%7*250
	payload, _ := json.Marshal(map[string]any{"order_id": id, "customer_id": customer, "total_cents": total})
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO pgx_orders (id, customer_id, total_cents) VALUES ($1, $2, $3)`,
			id, customer, total); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		msg := message.NewMessage(watermill.NewUUID(), payload)
		// A customer's events reach Kafka in order, with the customer as the key.
		msg.Metadata.Set(outbox.PartitionKeyMetadataKey, customer)
		msg.Metadata.Set("run", run)
		// Part of tx: if it rolls back, so does the event. (Code that only
		// holds a message.Publisher, a cqrs.EventBus say, passes the
		// transaction in the context instead: outbox.ContextWithPgxTx.)
		return pub.WithPgxTx(tx).Publish(topic, msg)
	})
}

// countEvents consumes the topic and counts the records of this run.
func countEvents(brokers []string, run string) (received func() int, stop func(), err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, nil, fmt.Errorf("kafka consumer: %w", err)
	}
	counts := make(chan int, 1)
	counts <- 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fetches := cl.PollFetches(ctx)
			mine := 0
			fetches.EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key == "run" && string(h.Value) == run {
						mine++
					}
				}
			})
			n := <-counts
			counts <- n + mine
		}
	}()
	received = func() int {
		n := <-counts
		counts <- n
		return n
	}
	return received, func() { cancel(); <-done; cl.Close() }, nil
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
