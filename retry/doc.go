// Package retry decides what kind of failure a publish error is, and retries
// in process what is worth retrying there.
//
// Every failure is one of three kinds (Kind):
//
//   - Transient: one attempt is charged; the row is due again after Backoff,
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
// Middleware pauses every handler while the destination is unavailable (a
// circuit: after the first failure the pause doubles from 100ms up to
// CircuitMaxBackoff, 1s by default, and one message at a time probes the
// destination, so a relay resumes within about a second of the broker's
// return), and retries Transient failures in process if QuickRetries is
// set. An Unavailable failure counts as an outage only while nothing else
// gets through: a message that keeps failing Unavailable while the
// destination accepts other messages between its failures, for ten times
// CircuitMaxBackoff, fails on its own, and Handle returns Transient for
// it. Handle returns its verdict. The forwarder runs it inside its own
// handler, so the router's middlewares, wherever they are added, cannot
// hide an error from it, and records the verdict for the subscriber, which
// decides the row's fate (retry budget included) in one place.
//
// Watermill's Retry middleware on a relay's router is redundant with
// QuickRetries and retries Permanent and Unavailable failures too; it
// costs time, never a message.
package retry
