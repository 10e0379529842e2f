// Package retry decides what the outbox relay does with a message whose
// publish failed, and retries in process what is worth retrying there.
//
// Every failure is one of three kinds (Kind):
//
//   - Transient: charge one attempt; the row is due again after Backoff,
//     and is dead once MaxRetryCount attempts failed.
//   - Unavailable: the destination cannot be reached. No attempt is
//     charged and the claim is released, so a broker outage never kills
//     rows, however long it lasts.
//   - Permanent: the destination can never accept the message (too large,
//     invalid topic). The row is dead at once, kept with its error.
//
// A Classifier maps an error to its kind; DefaultClassifier knows the Kafka
// and RabbitMQ publishers' errors, and PermanentError and UnavailableError
// let any handler state the kind itself.
//
// Watermill's Nack carries no reason, so the verdict travels beside it: the
// relay's subscriber puts an Outcome in each message's context
// (ContextWithOutcome), Middleware records the verdict there (Report) before
// its handler returns the error that makes the router nack, and the
// subscriber reads it on Nack (OutcomeFromContext, Outcome.Get). A nack
// without a verdict counts as Transient.
//
// Middleware also pauses all handlers while the destination is unavailable
// (a circuit with exponential backoff), retrying the failed message in place
// rather than giving it back, and retries Transient failures in process if
// QuickRetries is set.
//
// # Middleware order
//
// Watermill applies middlewares in the order they were added, the first
// added outermost, router-level (Router.AddMiddleware) and handler-level
// (Handler.AddMiddleware) alike, in one list. Add Middleware to the relay's
// handler, after the router's own middlewares, so it is innermost: it must
// see the handler's error first and return it unchanged in kind, and its
// verdict must be the last word.
//
// Never wrap a relay handler in Watermill's PoisonQueue, InstantAck or
// Deduplicator middlewares: each acks messages whose publish failed (or was
// skipped), and an acked row is marked published, so the message is lost.
// Watermill's Retry middleware is redundant with QuickRetries and, outside
// this one, retries Permanent and Unavailable failures too; Timeout is fine
// (its context is derived from the message's, Outcome included).
package retry
