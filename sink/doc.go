// Package sink builds the broker publishers the relay republishes outbox rows
// through: Kafka (watermill-kafka/v3) and RabbitMQ (amqp091-go, in
// watermill-amqp/v2's message format), configured so that Publish returns
// nil only once the broker has durably accepted the message. The relay marks
// a row published only after that, so a configuration that can lose an
// acknowledged message would silently break the outbox's at-least-once
// promise.
//
// Kafka: NewKafkaPublisher waits for all in-sync replicas (acks=all) with the
// idempotent producer, and uses the PartitionKeyMetadataKey metadata as the
// Kafka message key, so messages with the same key land on the same
// partition in the order they were published. Metadata becomes record
// headers.
//
// RabbitMQ: NewAMQPPublisher publishes persistent messages with pipelined
// publisher confirms (many outstanding per channel) and declares each
// topic's durable queue (and, for TopologyExchange, the exchange and
// binding) before the first publish to it, so a message is never dropped as
// unroutable. Metadata becomes message headers.
//
// Both put the Watermill message UUID in the "_watermill_message_uuid"
// header, so Watermill subscribers read the message back unchanged.
//
// Both connect on first use, not in their constructors: a relay starts while
// its broker is down, and pauses (charging no row) until it answers. Both
// mark their errors for retry.DefaultClassifier (listed on KafkaPublisher
// and AMQPPublisher): what the broker can never take is Permanent, an
// unreachable broker Unavailable, the rest Transient. After Close, Publish
// fails with an error wrapping watermilloutbox.ErrClosed.
package sink
