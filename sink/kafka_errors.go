package sink

import (
	"errors"
	"strings"

	"github.com/IBM/sarama"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// classifyKafkaError marks an error of a watermill-kafka (IBM/sarama)
// publisher for retry.DefaultClassifier, as KafkaPublisher's documentation
// lists. It looks through every layer of wrapping (including
// github.com/pkg/errors and sarama.ProducerError); an error marked already
// keeps its mark; nil stays nil.
func classifyKafkaError(err error) error {
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
