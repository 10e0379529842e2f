package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"syscall"
	"testing"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-multierror"
	pkgerrors "github.com/pkg/errors"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// producerError is what sarama's producer returns per message.
func producerError(err error) *sarama.ProducerError {
	return &sarama.ProducerError{Msg: &sarama.ProducerMessage{Topic: "orders"}, Err: err}
}

// kafkaProduce wraps err as watermill-kafka's Publisher does.
func kafkaProduce(err error) error {
	return pkgerrors.Wrapf(err, "cannot produce message %s", "uuid-1")
}

// amqpPublish wraps err as watermill-amqp's Publisher does.
func amqpPublish(err error) error {
	return pkgerrors.Wrap(err, "cannot publish msg")
}

type errorCase struct {
	name string
	err  error
	want retry.Kind
}

// TestClassifyKafkaError: what the relay makes of each error of sarama and
// watermill-kafka, once the Kafka sink marked it.
func TestClassifyKafkaError(t *testing.T) {
	t.Parallel()
	runErrorCases(t, classifyKafkaError, []errorCase{
		{"mark kept", retry.UnavailableError(sarama.ErrMessageSizeTooLarge), retry.Unavailable},
		// Kafka: permanent.
		{"ErrMessageSizeTooLarge", sarama.ErrMessageSizeTooLarge, retry.Permanent},
		{"ErrMessageSizeTooLarge watermill-kafka", kafkaProduce(sarama.ErrMessageSizeTooLarge), retry.Permanent},
		{"ErrMessageSizeTooLarge %w", fmt.Errorf("forward: %w", kafkaProduce(sarama.ErrMessageSizeTooLarge)), retry.Permanent},
		{"ErrMessageSetSizeTooLarge", kafkaProduce(sarama.ErrMessageSetSizeTooLarge), retry.Permanent},
		{"ErrInvalidRecord", kafkaProduce(sarama.ErrInvalidRecord), retry.Permanent},
		{"ErrInvalidTopic", kafkaProduce(sarama.ErrInvalidTopic), retry.Permanent},
		{"ProducerError too large", producerError(sarama.ErrMessageSizeTooLarge), retry.Permanent},
		{"client-side too large", kafkaProduce(sarama.ConfigurationError(
			"Attempt to produce message larger than configured Producer.MaxMessageBytes: 2000000 > 1048576")), retry.Permanent},
		{"watermill-kafka marshal", pkgerrors.Wrapf(
			pkgerrors.Errorf("metadata %s is reserved by watermill for message UUID", "_watermill_message_uuid"),
			"cannot marshal message %s", "uuid-1"), retry.Permanent},
		// Kafka: unavailable.
		{"ErrOutOfBrokers", kafkaProduce(sarama.ErrOutOfBrokers), retry.Unavailable},
		{"ErrOutOfBrokers sarama.Wrap", kafkaProduce(sarama.Wrap(sarama.ErrOutOfBrokers, errors.New("dial tcp: refused"))), retry.Unavailable},
		{"ErrNotConnected", kafkaProduce(sarama.ErrNotConnected), retry.Unavailable},
		{"ErrClosedClient", kafkaProduce(sarama.ErrClosedClient), retry.Unavailable},
		{"ErrShuttingDown", kafkaProduce(sarama.ErrShuttingDown), retry.Unavailable},
		{"ErrBrokerNotAvailable", kafkaProduce(sarama.ErrBrokerNotAvailable), retry.Unavailable},
		{"ErrLeaderNotAvailable", kafkaProduce(sarama.ErrLeaderNotAvailable), retry.Unavailable},
		{"ErrNotLeaderForPartition", kafkaProduce(sarama.ErrNotLeaderForPartition), retry.Unavailable},
		{"ErrRequestTimedOut", kafkaProduce(sarama.ErrRequestTimedOut), retry.Unavailable},
		{"ErrNetworkException", kafkaProduce(sarama.ErrNetworkException), retry.Unavailable},
		{"ErrNotEnoughReplicas", kafkaProduce(sarama.ErrNotEnoughReplicas), retry.Unavailable},
		{"ErrNotEnoughReplicasAfterAppend", kafkaProduce(sarama.ErrNotEnoughReplicasAfterAppend), retry.Unavailable},
		// A follower down and the ISR below min.insync.replicas: refused
		// before or after the leader appended (TestNotEnoughReplicasKafkaCluster).
		{"ProducerError ErrNotEnoughReplicas", producerError(sarama.ErrNotEnoughReplicas), retry.Unavailable},
		{"ProducerErrors not enough replicas", sarama.ProducerErrors{
			producerError(sarama.ErrNotEnoughReplicas), producerError(sarama.ErrNotEnoughReplicasAfterAppend)}, retry.Unavailable},
		{"watermill-kafka closed", pkgerrors.New("publisher closed"), retry.Unavailable},
		// Kafka: transient.
		{"ErrTopicAuthorizationFailed", kafkaProduce(sarama.ErrTopicAuthorizationFailed), retry.Transient},
		{"ErrUnknownTopicOrPartition", kafkaProduce(sarama.ErrUnknownTopicOrPartition), retry.Transient},
		{"ConfigurationError", kafkaProduce(sarama.ConfigurationError("Producing headers requires Kafka at least v0.11")), retry.Transient},
		{"ErrUnknown", kafkaProduce(sarama.ErrUnknown), retry.Transient},
		// Kafka batches.
		{"ProducerErrors all unavailable", sarama.ProducerErrors{
			producerError(sarama.ErrOutOfBrokers), producerError(io.EOF)}, retry.Unavailable},
		{"ProducerErrors one permanent", sarama.ProducerErrors{
			producerError(sarama.ErrOutOfBrokers), producerError(sarama.ErrMessageSizeTooLarge)}, retry.Permanent},
		{"ProducerErrors mixed", sarama.ProducerErrors{
			producerError(sarama.ErrOutOfBrokers), producerError(sarama.ErrTopicAuthorizationFailed)}, retry.Transient},
		{"ProducerErrors wrapped", kafkaProduce(sarama.ProducerErrors{producerError(sarama.ErrInvalidTopic)}), retry.Permanent},
		// The idempotent producer's own state after other failures: a Kafka
		// outage opens sarama's circuit breaker (TestBrokerOutageKafka
		// dead-lettered rows within seconds before), and a broker refusing
		// one message resets the sequence, failing messages sent beside it
		// (TestPoisonOrdered).
		{"breaker open", kafkaProduce(errors.New("circuit breaker is open")), retry.Unavailable},
		{"out of order sequence", kafkaProduce(sarama.ErrOutOfOrderSequenceNumber), retry.Unavailable},
		{"unknown producer id", kafkaProduce(sarama.ErrUnknownProducerID), retry.Unavailable},
		{"invalid producer epoch", kafkaProduce(sarama.ErrInvalidProducerEpoch), retry.Unavailable},
		{"producer fenced", kafkaProduce(sarama.ErrProducerFenced), retry.Unavailable},
		{"invalid producer id mapping", kafkaProduce(sarama.ErrInvalidProducerIDMapping), retry.Unavailable},
		{"sequence assertion", kafkaProduce(errors.New("assertion failed: message out of sequence added to a batch")), retry.Unavailable},
		{"out of order in a batch", sarama.ProducerErrors{producerError(sarama.ErrOutOfOrderSequenceNumber)}, retry.Unavailable},
		// Network and context.
		{"dial refused", kafkaProduce(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), retry.Unavailable},
		{"ECONNREFUSED", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), retry.Unavailable},
		{"ECONNRESET", fmt.Errorf("read: %w", syscall.ECONNRESET), retry.Unavailable},
		{"net.ErrClosed", fmt.Errorf("write: %w", net.ErrClosed), retry.Unavailable},
		{"DNS", &net.DNSError{Err: "no such host", Name: "kafka", IsNotFound: true}, retry.Unavailable},
		{"io.EOF", kafkaProduce(io.EOF), retry.Unavailable},
		{"io.ErrUnexpectedEOF", kafkaProduce(io.ErrUnexpectedEOF), retry.Unavailable},
		{"context.Canceled", fmt.Errorf("publish: %w", context.Canceled), retry.Unavailable},
		{"context.DeadlineExceeded", kafkaProduce(context.DeadlineExceeded), retry.Unavailable},
		{"errors.Join transient and unavailable", errors.Join(errors.New("x"), io.EOF), retry.Unavailable},
		{"errors.Join unavailable and permanent", errors.Join(io.EOF, sarama.ErrInvalidTopic), retry.Permanent},
		// Anything else.
		{"plain", errors.New("boom"), retry.Transient},
		{"nil", nil, retry.Transient},
	})
}

// TestClassifyAMQPError: the same for amqp091 and watermill-amqp errors.
func TestClassifyAMQPError(t *testing.T) {
	t.Parallel()
	runErrorCases(t, classifyAMQPError, []errorCase{
		{"mark kept", retry.PermanentError(amqp.ErrClosed), retry.Permanent},
		// AMQP: permanent.
		{"ContentTooLarge", amqpPublish(&amqp.Error{Code: amqp.ContentTooLarge, Reason: "CONTENT_TOO_LARGE", Server: true}), retry.Permanent},
		{"NoRoute", &amqp.Error{Code: amqp.NoRoute, Reason: "NO_ROUTE"}, retry.Permanent},
		{"406 message size", fmt.Errorf("commit: %w", &amqp.Error{Code: amqp.PreconditionFailed,
			Reason: "PRECONDITION_FAILED - message size 2000000 is larger than configured max size 1000000"}), retry.Permanent},
		{"watermill-amqp marshal", pkgerrors.Wrap(errors.New("bad header"), "cannot marshal message"), retry.Permanent},
		// AMQP: unavailable.
		{"ErrClosed", amqpPublish(amqp.ErrClosed), retry.Unavailable},
		{"ErrClosed opening channel", pkgerrors.Wrap(amqp.ErrClosed, "cannot open channel"), retry.Unavailable},
		{"ConnectionForced", &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure"}, retry.Unavailable},
		{"FrameError", &amqp.Error{Code: amqp.FrameError, Reason: "read tcp: connection reset by peer"}, retry.Unavailable},
		{"UnexpectedFrame", amqp.ErrUnexpectedFrame, retry.Unavailable},
		{"ResourceError", &amqp.Error{Code: amqp.ResourceError}, retry.Unavailable},
		{"Error by value", amqp.Error{Code: amqp.ConnectionForced}, retry.Unavailable},
		{"not connected", pkgerrors.New("not connected to AMQP"), retry.Unavailable},
		{"pub/sub closed", fmt.Errorf("forward: %w", pkgerrors.New("pub/sub is connection closedChan")), retry.Unavailable},
		{"publish error and channel close error", multierror.Append(
			amqpPublish(&net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}), amqp.ErrClosed), retry.Unavailable},
		// AMQP: transient.
		{"NotFound", pkgerrors.Wrap(&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'orders'"}, "cannot declare exchange"), retry.Transient},
		{"AccessRefused", &amqp.Error{Code: amqp.AccessRefused}, retry.Transient},
		{"406 other", &amqp.Error{Code: amqp.PreconditionFailed, Reason: "PRECONDITION_FAILED - inequivalent arg 'type'"}, retry.Transient},
		{"not confirmed", fmt.Errorf("delivery not confirmed for message [%s]", "uuid-1"), retry.Transient},
	})
}

func runErrorCases(t *testing.T, classify func(error) error, cases []errorCase) {
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			marked := classify(tt.err)
			require.Equal(t, tt.want, retry.DefaultClassifier(marked), "error: %v", tt.err)
			if tt.err != nil {
				require.Equal(t, tt.err.Error(), marked.Error(), "the mark keeps the message")
				if reflect.TypeOf(tt.err).Comparable() { // not sarama.ProducerErrors, a slice
					require.ErrorIs(t, marked, tt.err)
				}
			} else {
				require.NoError(t, marked)
			}
		})
	}
}
