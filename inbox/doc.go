// Package inbox is the consuming half of the outbox: a Watermill handler
// middleware that applies each message once per consumer, durably.
//
// The outbox delivers at least once; a relay killed before its ack, a lost
// lease or a broker that loses a confirm each republish. The inbox records
// (consumer, message UUID) in a table, in the same transaction as the
// handler's own writes: the record commits exactly when the effects do. A
// redelivery finds the record and is acked without running the handler; a
// handler that fails rolls back the record with its writes, so the
// redelivery runs it again. Watermill's middleware.Deduplicator, by
// contrast, is in memory and records before the handler runs.
//
// The handler finds the transaction in the message's context, where the
// outbox's Publisher looks for it too:
//
//	func(msg *message.Message) ([]*message.Message, error) {
//		tx, _ := watermilloutbox.TxFromContext(msg.Context()) // PgxTxFromContext on a pgx pool
//		_, err := tx.ExecContext(msg.Context(), `UPDATE ...`)
//		return nil, err
//	}
//
// # Consume, transform, produce
//
// Messages the handler emits must commit with its writes. Either publish
// them through an outbox Publisher with the message's context (an
// outbox.EventBus or a cqrs.EventBus over the Publisher in a cqrs
// handler: the context carries the transaction), or return them from the
// handler with Config.Outbox set: the middleware publishes them into the
// outbox under the publish topic the handler was added with and returns
// none to the router. Returned messages without Config.Outbox fail the
// delivery (ErrOutputWithoutOutbox): the router would publish them after
// the commit, and lose them if that failed.
//
// Outbox and inbox together: every message committed by a producer
// reaches the broker at least once, and its effects in each consumer, and
// what that consumer emits, are applied once, as long as its redeliveries
// arrive within the dedup window (Config.Retention).
//
// # Concurrent deliveries
//
// Two deliveries of one message at once (a Kafka rebalance, a RabbitMQ
// redelivery to another consumer) apply it once: the first to insert the
// record holds it, uncommitted, until its handler finishes; the second's
// insert of the same primary key waits for that transaction, and then
// either finds the row committed (a duplicate, acked) or, if the first
// rolled back, inserts it and applies the message itself.
//
//   - PostgreSQL: INSERT … ON CONFLICT DO NOTHING waits on the other
//     transaction's uncommitted index entry, then inserts nothing (a
//     duplicate) or the row. Under REPEATABLE READ or SERIALIZABLE the
//     second fails with a serialization error instead: nacked, its
//     redelivery is a duplicate.
//   - MySQL/MariaDB (InnoDB): the INSERT's duplicate-key check takes a
//     lock on the existing index record, so it waits for the other
//     transaction, then fails with ER_DUP_ENTRY (a duplicate; the
//     statement alone is rolled back) or inserts.
//   - SQLite: one writer at a time. The second transaction's INSERT waits
//     for the write lock (the busy timeout of outbox.SQLiteConnParams; on
//     a pool of one connection, for the connection), then sees the
//     committed row.
//
// The waiting delivery holds a connection meanwhile; a pool needs room
// for the router's concurrent handlers.
//
// # Retention
//
// Records older than Config.Retention (a week by default) are deleted by
// Purge, or 'watermill-outbox inbox purge'. A message redelivered after
// its record was purged is applied again: the window must outlast any
// redelivery the broker can make (consumer offsets rewound, a dead-letter
// queue replayed).
//
// Limits: effects outside the consumer's database (an HTTP call, an
// e-mail) are not covered and may happen twice; messages are deduplicated
// by UUID, so a producer that republishes the same event under a new UUID
// defeats the inbox; the transaction spans the handler, so a slow handler
// holds a connection and its row locks that long.
package inbox
