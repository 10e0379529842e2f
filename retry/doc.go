// Package retry decides what kind of failure a publish error is: what the
// relay does with the row.
//
// Every failure is one of three kinds (Kind):
//
//   - Transient: one attempt is charged; the row is due again after backoff,
//     and is dead once MaxRetryCount attempts failed.
//   - Unavailable: the destination cannot be reached. No attempt is
//     charged and the claim is released, so a broker outage never kills
//     rows, however long it lasts.
//   - Permanent: the destination can never accept the message (too large,
//     invalid topic). The row is dead at once, kept with its error.
//
// A Classifier maps an error to its kind. DefaultClassifier reads the marks
// PermanentError and UnavailableError put on an error (the publishers of
// package sink mark the errors of Kafka and RabbitMQ so, as any handler
// may), and knows what needs no broker knowledge: closed publishers
// (watermilloutbox.ErrClosed), context ends and network errors are
// Unavailable; the rest is Transient. This package imports no broker
// client.
//
// The forwarder acts on the kind: it pauses every handler while the
// destination is unavailable (a circuit: after the first failure the pause
// doubles from 100ms up to config.Config.UnavailableBackoffMax, 1s by
// default, and one message at a time probes the destination, so a relay
// resumes within about a second of the broker's return), and retries
// Transient failures in process if forwarder.Config.QuickRetries is set. An
// Unavailable failure counts as an outage only while nothing else gets
// through: a message that keeps failing Unavailable while the destination
// accepts other messages between its failures, for ten times that maximum
// pause, fails on its own, as Transient. This runs inside the forwarder's
// own handler, so the router's middlewares, wherever they are added, cannot
// hide an error from it, and the subscriber decides the row's fate (retry
// budget included) from the verdict in one place.
//
// Watermill's Retry middleware on a relay's router is redundant with
// forwarder.Config.QuickRetries and retries Permanent and Unavailable
// failures too; it costs time, never a message.
package retry
