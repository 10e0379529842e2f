package forwarder_test

import (
	"context"
	"database/sql"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// A service relays its outbox to Kafka on a router of its own. It needs
// PostgreSQL and Kafka, so it is compiled but not run.
func ExampleNewForwarder() {
	ctx := context.Background()
	logger := watermill.NewStdLogger(false, false)
	db, _ := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")

	cfg, err := config.FromEnv() // OUTBOX_* settings, or config.Default()
	if err != nil {
		panic(err)
	}
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, logger)
	if err != nil {
		panic(err)
	}
	if err := store.Migrate(ctx); err != nil {
		panic(err)
	}
	kafkaPub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: []string{"localhost:9092"}}, logger)
	if err != nil {
		panic(err)
	}
	defer kafkaPub.Close()
	fwd, err := forwarder.NewForwarder(store, kafkaPub, forwarder.Config{}, logger)
	if err != nil {
		panic(err)
	}
	defer fwd.Close()
	// Publisher and relay in one process: every commit wakes the relay.
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{Notifier: fwd.Subscriber()}, logger)
	if err != nil {
		panic(err)
	}
	_ = pub // publish with pub.WithTx(tx) in the service's transactions
	go func() { _ = fwd.Run(ctx) }()
}

// The same to RabbitMQ, with the forwarder on the service's own router, and
// the consumer side: the sink declares a durable queue named after the
// topic, which watermill-amqp's durable queue config reads. It needs
// PostgreSQL and RabbitMQ, so it is compiled but not run.
func ExampleNewForwarder_rabbitMQ() {
	ctx := context.Background()
	logger := watermill.NewStdLogger(false, false)
	db, _ := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	const amqpURL = "amqp://guest:guest@127.0.0.1:5672/"

	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Default()}, logger)
	if err != nil {
		panic(err)
	}
	amqpPub, err := sink.NewAMQPPublisher(sink.AMQPConfig{URL: amqpURL}, logger) // connects on first use
	if err != nil {
		panic(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger) // the service's router, any middlewares
	if err != nil {
		panic(err)
	}
	fwd, err := forwarder.NewForwarder(store, amqpPub, forwarder.Config{Router: router}, logger)
	if err != nil {
		panic(err)
	}

	// A consumer of "orders.placed", in this service or another.
	consumer, err := wamqp.NewSubscriber(wamqp.NewDurableQueueConfig(amqpURL), logger)
	if err != nil {
		panic(err)
	}
	router.AddNoPublisherHandler("on_order_placed", "orders.placed", consumer, func(msg *message.Message) error {
		return nil // msg.UUID is the outbox message's UUID: de-duplicate on it
	})

	_ = router.Run(ctx) // until ctx ends; then, in this order:
	_ = router.Close()  // stops handing out messages, waits for handlers
	_ = fwd.Close()     // gives back the claims still held
	_ = amqpPub.Close()
}
