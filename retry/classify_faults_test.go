package retry_test

import (
	"errors"
	"testing"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// TestDefaultClassifierSaramaProducerState: the errors sarama's producer
// returns because of its own state, not the message's, cost no attempt.
// The fault suite met each: a Kafka outage opens sarama's circuit breaker
// (TestBrokerOutageKafka dead-lettered rows within seconds before), and a
// broker refusing one message resets the idempotent producer's sequence,
// failing messages sent beside it (TestPoisonOrdered).
func TestDefaultClassifierSaramaProducerState(t *testing.T) {
	t.Parallel()
	for name, err := range map[string]error{
		// github.com/eapache/go-resiliency/breaker.ErrBreakerOpen, after
		// three failed metadata or leader lookups in a row.
		"breaker open":            kafkaProduce(errors.New("circuit breaker is open")),
		"out of order sequence":   kafkaProduce(sarama.ErrOutOfOrderSequenceNumber),
		"sequence assertion":      kafkaProduce(errors.New("assertion failed: message out of sequence added to a batch")),
		"out of order in a batch": sarama.ProducerErrors{producerError(sarama.ErrOutOfOrderSequenceNumber)},
	} {
		require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err), name)
	}
}
