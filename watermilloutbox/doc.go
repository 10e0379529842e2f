// Package watermilloutbox is the write side of a transactional outbox for
// Watermill: the outbox table (SQLStore, on PostgreSQL, MySQL/MariaDB or
// SQLite), a message.Publisher that inserts messages under the caller's
// transaction, and an event bus that routes integration events to the
// outbox and domain events to in-process handlers.
//
// The contract: a message published through this package is written in the
// caller's transaction. If the transaction commits, the relay will deliver the
// message to the broker at least once; if the transaction rolls back, so does
// the message, and nothing is ever published for it.
//
// Publish: make the store once, with every setting (NewSQLStore, or
// NewPgxStore over a pgx pool; config.Config), create its table (Migrate,
// or DDL for a migration tool of your own), and publish in the transaction
// that changes your rows:
//
//	store, err := watermilloutbox.NewSQLStore(db, watermilloutbox.SQLStoreConfig{Dialect: watermilloutbox.PostgreSQL, Outbox: cfg}, logger)
//	err = store.Migrate(ctx)
//	pub, err := watermilloutbox.NewPublisher(store, watermilloutbox.PublisherConfig{}, logger)
//	err = pub.WithTx(tx).Publish("orders.placed", msg) // or ContextWithTx, WithPgxTx
//
// A message with a PartitionKeyMetadataKey is delivered after the earlier
// messages of its key (and the key is its Kafka key). EventBus publishes
// typed events the same way.
//
// Relay: forwarder.NewForwarder(store, destination, forwarder.Config{},
// logger) republishes the committed rows to Kafka or RabbitMQ (package
// sink) or any message.Publisher, by the store's settings. The store is the
// relay's relaystore.Store; package storetest checks a store of your own.
//
// Operate: the dead rows (ListDead, CountDead, Requeue, RequeueTopic,
// PurgeDead…), the keys held back by a failing row (BlockedKeys,
// RequeueKey, SkipKey), and the table's state per topic (Stats) are
// methods of SQLStore; package metrics exports them to Prometheus, package
// admin serves them as a web page, and the watermill-outbox command as a
// shell command.
package watermilloutbox
