package sink

import (
	"fmt"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	pkgerrors "github.com/pkg/errors"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// TestErrorMarksAsReturned: the marks the sinks put on the errors of their
// brokers, as watermill-kafka, amqp091 and watermill-amqp return them.
func TestErrorMarksAsReturned(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	for _, err := range []error{
		// As watermill-kafka returns them.
		pkgerrors.Wrapf(sarama.ErrMessageSizeTooLarge, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrOutOfBrokers, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrTopicAuthorizationFailed, "cannot produce message %s", "uuid-1"),
	} {
		fmt.Fprintf(&out, "%-11s %v\n", retry.DefaultClassifier(classifyKafkaError(err)), err)
	}
	for _, err := range []error{
		// As amqp091 and watermill-amqp return them.
		pkgerrors.Wrap(amqp.ErrClosed, "cannot open channel"),
		pkgerrors.Wrap(&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'orders'"}, "cannot declare exchange"),
	} {
		fmt.Fprintf(&out, "%-11s %v\n", retry.DefaultClassifier(classifyAMQPError(err)), err)
	}
	require.Equal(t, `permanent   cannot produce message uuid-1: kafka server: Message was too large, server rejected it to avoid allocation error
unavailable cannot produce message uuid-1: kafka: client has run out of available brokers to talk to
transient   cannot produce message uuid-1: kafka server: The client is not authorized to access this topic
unavailable cannot open channel: Exception (504) Reason: "channel/connection is not open"
transient   cannot declare exchange: Exception (404) Reason: "NOT_FOUND - no exchange 'orders'"
`, out.String())
}
