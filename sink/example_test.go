package sink_test

import (
	"fmt"

	"github.com/IBM/sarama"
	pkgerrors "github.com/pkg/errors"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/retry"
	"github.com/e0a82c8c/watermill-outbox/sink"
)

// The sinks mark the errors of their brokers for retry.DefaultClassifier;
// ClassifyKafkaError and ClassifyAMQPError do the same for a publisher of
// your own.
func ExampleClassifyKafkaError() {
	for _, err := range []error{
		// As watermill-kafka returns them.
		pkgerrors.Wrapf(sarama.ErrMessageSizeTooLarge, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrOutOfBrokers, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrTopicAuthorizationFailed, "cannot produce message %s", "uuid-1"),
	} {
		fmt.Printf("%-11s %v\n", retry.DefaultClassifier(sink.ClassifyKafkaError(err)), err)
	}
	for _, err := range []error{
		// As amqp091 and watermill-amqp return them.
		pkgerrors.Wrap(amqp.ErrClosed, "cannot open channel"),
		pkgerrors.Wrap(&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'orders'"}, "cannot declare exchange"),
	} {
		fmt.Printf("%-11s %v\n", retry.DefaultClassifier(sink.ClassifyAMQPError(err)), err)
	}
	// Output:
	// permanent   cannot produce message uuid-1: kafka server: Message was too large, server rejected it to avoid allocation error
	// unavailable cannot produce message uuid-1: kafka: client has run out of available brokers to talk to
	// transient   cannot produce message uuid-1: kafka server: The client is not authorized to access this topic
	// unavailable cannot open channel: Exception (504) Reason: "channel/connection is not open"
	// transient   cannot declare exchange: Exception (404) Reason: "NOT_FOUND - no exchange 'orders'"
}
