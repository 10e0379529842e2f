package sink

import (
	"errors"
	"strings"

	"github.com/IBM/sarama"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// ClassifyKafkaError marks an error of a watermill-kafka (IBM/sarama)
// publisher for retry.DefaultClassifier, so the relay knows whether to
// charge the row, dead-letter it or pause. KafkaPublisher does this to
// every error it returns; call it when relaying through a watermill-kafka
// publisher of your own. It looks through every layer of wrapping
// (including github.com/pkg/errors and sarama.ProducerError); an error
// marked already keeps its mark; nil stays nil.
//
//   - Permanent (the message itself is unacceptable): ErrMessageSizeTooLarge,
//     ErrMessageSetSizeTooLarge (RECORD_LIST_TOO_LARGE), ErrInvalidRecord,
//     ErrInvalidTopic, sarama's own "Attempt to produce message larger than
//     configured Producer.MaxMessageBytes", and watermill-kafka's "cannot
//     marshal message …" (its marshaler fails only on the message).
//   - Unavailable (no row is to blame): ErrOutOfBrokers, ErrNotConnected,
//     ErrClosedClient, ErrShuttingDown, ErrBrokerNotAvailable,
//     ErrLeaderNotAvailable, ErrNotLeaderForPartition,
//     ErrReplicaNotAvailable, ErrRequestTimedOut, ErrNetworkException,
//     ErrNotEnoughReplicas(AfterAppend), ErrKafkaStorageError, and the
//     idempotent producer's session errors ErrOutOfOrderSequenceNumber,
//     ErrUnknownProducerID, ErrInvalidProducerEpoch, ErrProducerFenced,
//     ErrInvalidProducerIDMapping; sarama's "circuit breaker is open" (three
//     failed metadata lookups in a row) and "message out of sequence added
//     to a batch" (the idempotent producer's state after another message's
//     failure); watermill-kafka's "publisher closed".
//   - A sarama.ProducerErrors batch: Permanent if any element is,
//     Unavailable if all are, unmarked (Transient) otherwise.
//   - Everything else is left unmarked, so Transient: among them errors an
//     operator can fix while rows wait, such as ErrTopicAuthorizationFailed
//     and ErrUnknownTopicOrPartition.
//
// Kafka rejects a record batch as a whole, and sarama batches concurrent
// sends to one partition up to Producer.MaxMessageBytes: if that exceeds
// the topic's max.message.bytes, small messages sharing a batch with a
// large one are rejected as too large too. KafkaPublisher sends a message
// the broker refused as too large again alone before returning the error,
// so only the large one is marked Permanent; a watermill-kafka publisher of
// your own does not. Keep Producer.MaxMessageBytes at or below the topic's
// limit (sarama then rejects a large message alone, before sending).
func ClassifyKafkaError(err error) error {
	if err == nil {
		return nil
	}
	return mark(err, kafkaKind(err))
}

func kafkaKind(err error) retry.Kind {
	if k, ok := retry.MarkedKind(err); ok {
		return k
	}
	var batch sarama.ProducerErrors
	if errors.As(err, &batch) && len(batch) > 0 {
		return kafkaBatchKind(batch)
	}
	switch {
	case kafkaPermanent(err):
		return retry.Permanent
	case kafkaUnavailable(err):
		return retry.Unavailable
	}
	return retry.DefaultClassifier(err)
}

// kafkaBatchKind classifies the errors of a sarama batch; it has no Unwrap,
// so errors.Is and errors.As do not look inside.
func kafkaBatchKind(batch sarama.ProducerErrors) retry.Kind {
	unavailable := 0
	for _, pe := range batch {
		if pe == nil {
			unavailable++ // no error: blames nothing
			continue
		}
		switch kafkaKind(pe) {
		case retry.Permanent:
			return retry.Permanent
		case retry.Unavailable:
			unavailable++
		}
	}
	if unavailable == len(batch) {
		return retry.Unavailable
	}
	return retry.Transient
}

// permanentKafkaErrors are Kafka broker errors about the record itself.
var permanentKafkaErrors = []error{
	sarama.ErrMessageSizeTooLarge,
	sarama.ErrMessageSetSizeTooLarge,
	sarama.ErrInvalidRecord,
	sarama.ErrInvalidTopic,
}

// saramaTooLarge starts the ConfigurationError sarama's producer returns for
// a message above Producer.MaxMessageBytes, before sending it.
const saramaTooLarge = "Attempt to produce message larger than configured Producer.MaxMessageBytes"

// marshalFailed starts the message watermill-kafka wraps a marshaler error
// in ("cannot marshal message <uuid>").
const marshalFailed = "cannot marshal message"

// brokerTooLarge reports whether the broker refused err's batch as too
// large: the batch, which may hold other messages than the large one.
func brokerTooLarge(err error) bool {
	return errors.Is(err, sarama.ErrMessageSizeTooLarge) || errors.Is(err, sarama.ErrMessageSetSizeTooLarge)
}

func kafkaPermanent(err error) bool {
	for _, target := range permanentKafkaErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	var cfgErr sarama.ConfigurationError
	if errors.As(err, &cfgErr) && strings.HasPrefix(string(cfgErr), saramaTooLarge) {
		return true
	}
	return anyMessage(err, func(msg string) bool { return strings.HasPrefix(msg, marshalFailed) })
}

// unavailableKafkaErrors mean the cluster is unreachable or not accepting
// writes right now, whatever the message.
var unavailableKafkaErrors = []error{
	sarama.ErrOutOfBrokers,
	sarama.ErrNotConnected,
	sarama.ErrClosedClient,
	sarama.ErrShuttingDown,
	sarama.ErrBrokerNotAvailable,
	sarama.ErrLeaderNotAvailable,
	sarama.ErrNotLeaderForPartition,
	sarama.ErrReplicaNotAvailable,
	sarama.ErrRequestTimedOut,
	sarama.ErrNetworkException,
	sarama.ErrNotEnoughReplicas,
	sarama.ErrNotEnoughReplicasAfterAppend,
	sarama.ErrKafkaStorageError,
	// The idempotent producer's session after a broker restart, a leader
	// change or another message's failure, never this message (the
	// publisher replaces the producer: needsNewProducer).
	sarama.ErrOutOfOrderSequenceNumber,
	sarama.ErrUnknownProducerID,
	sarama.ErrInvalidProducerEpoch,
	sarama.ErrProducerFenced,
	sarama.ErrInvalidProducerIDMapping,
}

// unavailableKafkaMessages are errors sarama and watermill-kafka create with
// errors.New, so only their text identifies them.
var unavailableKafkaMessages = map[string]bool{
	"publisher closed":        true, // watermill-kafka, after Close
	"circuit breaker is open": true, // sarama (go-resiliency breaker.ErrBreakerOpen): 3 failed metadata/leader lookups in a row
	"assertion failed: message out of sequence added to a batch": true, // sarama, after another message's failure reset the sequence
}

func kafkaUnavailable(err error) bool {
	for _, target := range unavailableKafkaErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	return anyMessage(err, func(msg string) bool { return unavailableKafkaMessages[msg] })
}
