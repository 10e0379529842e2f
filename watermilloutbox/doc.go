// Package watermilloutbox is the write side of a transactional outbox for
// Watermill: the outbox table and its migrations, a message.Publisher that
// inserts messages under the caller's *sql.Tx, an event bus that routes
// integration events to the outbox and domain events to in-process handlers,
// and the Store port the relay (package forwarder) claims rows through.
//
// The contract: a message published through this package is written in the
// caller's transaction. If the transaction commits, the relay will deliver the
// message to the broker at least once; if the transaction rolls back, so does
// the message, and nothing is ever published for it.
package watermilloutbox
