package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/IBM/sarama"
	pkgerrors "github.com/pkg/errors"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

func ExampleDefaultClassifier() {
	errs := []error{
		// As watermill-kafka returns them.
		pkgerrors.Wrapf(sarama.ErrMessageSizeTooLarge, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrOutOfBrokers, "cannot produce message %s", "uuid-1"),
		pkgerrors.Wrapf(sarama.ErrTopicAuthorizationFailed, "cannot produce message %s", "uuid-1"),
		// As watermill-amqp returns them.
		pkgerrors.Wrap(amqp.ErrClosed, "cannot open channel"),
		pkgerrors.Wrap(&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'orders'"}, "cannot declare exchange"),
		// Anything, wrapped.
		fmt.Errorf("publish: %w", io.EOF),
		fmt.Errorf("publish: %w", context.Canceled),
		retry.PermanentError(errors.New("schema rejected")),
		errors.New("something else"),
	}
	for _, err := range errs {
		fmt.Printf("%-11s %v\n", retry.DefaultClassifier(err), err)
	}
	// Output:
	// permanent   cannot produce message uuid-1: kafka server: Message was too large, server rejected it to avoid allocation error
	// unavailable cannot produce message uuid-1: kafka: client has run out of available brokers to talk to
	// transient   cannot produce message uuid-1: kafka server: The client is not authorized to access this topic
	// unavailable cannot open channel: Exception (504) Reason: "channel/connection is not open"
	// transient   cannot declare exchange: Exception (404) Reason: "NOT_FOUND - no exchange 'orders'"
	// unavailable publish: EOF
	// unavailable publish: context canceled
	// permanent   schema rejected
	// transient   something else
}
