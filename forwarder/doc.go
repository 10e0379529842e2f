// Package forwarder is the outbox's relay: it claims committed rows from
// the outbox table (a relaystore.Store) and republishes them to Kafka,
// RabbitMQ or any message.Publisher, through a handler on a Watermill
// router, its own or the caller's.
//
// A Forwarder is a Subscriber over the table plus a router handler:
//
//   - the Subscriber claims due rows in short, fenced transactions (a
//     relay that stops beating in the store's relay registry for
//     RelayTimeout is dead, and its rows are taken over whatever their
//     lease; a lease also expires on its own), emits them as
//     Watermill messages with their original UUID, payload and metadata,
//     keeps per-key order, renews leases, and settles each row by what the
//     handler recorded for it: published, retried with backoff, dead after
//     MaxRetryCount attempts, or released uncharged while the destination
//     is unavailable;
//   - the handler publishes each message to its destination topic through
//     the relay's retry middleware (the circuit that pauses while the broker
//     is down, and in-process quick retries) and records, for that delivery, whether
//     the destination accepted it. Router middlewares cannot change that
//     record: a PoisonQueue or Deduplicator on the caller's router costs a
//     retry, never a message, and an InstantAck waits for the record.
//
// Every setting of the relay comes from the store's config.Config; Config
// here holds only what is the forwarder's own (router, handler name, topic
// filter, classifier, quick retries, observer, tracer provider). See the
// repository's docs/guarantees.md for the guarantees, and the fault suite
// (package faults) for the scenarios that back them.
//
// forwarder.go holds the Forwarder (its Config, the router handler that
// publishes and records each delivery); subscriber.go the Subscriber (its
// Config, Subscribe, wake-ups, the misuse warnings); topics.go the parser
// of Config.Topics' patterns. A subscription's
// decisions are one pure state machine, and its loop is one goroutine that
// feeds it events and carries out its effects; its parts, each in a file
// of its own:
//
//   - machine.go: the machine: events in (claim results, hand-outs,
//     verdicts, write results, ticks, Close), effects out (claim, build a
//     message, watch it, write acks, fates, releases, renewals, close);
//     it reads no clock and starts nothing, so its tests drive every
//     transition directly;
//   - schedule.go: when to claim (polling, wake-ups, backlog, errors);
//   - window.go: the claimed rows held, each in an explicit state, and the
//     per-key chains that emit one row of a key at a time;
//   - settle.go: the one decision of a row's fate from a verdict, and the
//     fenced writes that carry it out;
//   - acks.go, renew.go: batched ack writes and lease renewals;
//   - watch.go: one watcher per emitted message, turning its ack or nack
//     and its delivery record into a verdict; the record is filled by the
//     forwarder's handler, or, for a plain subscriber, by the ack itself:
//     one path either way;
//   - heartbeat.go: the relay's heartbeat in the store's relay registry,
//     and the lines that say it was declared dead or took over a dead
//     relay's rows;
//   - dbretry.go: the one retry policy for every database call the loop
//     retries;
//   - subscription.go: the loop itself, which applies the effects
//     (shutdown is a mode of the same machine);
//   - purge.go: the table's upkeep beside the loops: published rows past
//     PublishedRetention deleted in batches, and Store.Maintain.
//
// Two files make the relay observable, at no cost when unused:
//
//   - observe.go: the calls of the observer hook (claims, publishes,
//     failures, dead rows, fenced writes, pauses; the events are in
//     internal/observe, package metrics implements it), and the context
//     that carries each row to the handler;
//   - trace.go: the OpenTelemetry span of each publish, linked to the
//     trace context stored with the row.
package forwarder
