package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func ExampleDefaultClassifier() {
	errs := []error{
		retry.PermanentError(errors.New("schema rejected")),   // the message can never go
		retry.UnavailableError(errors.New("cluster is down")), // no row is to blame
		fmt.Errorf("publish: %w", io.EOF),                     // the connection broke
		fmt.Errorf("publish: %w", context.Canceled),           // shutdown
		fmt.Errorf("kafka publisher: %w", outbox.ErrClosed),   // shutdown
		errors.New("something else"),                          // one attempt charged
	}
	for _, err := range errs {
		fmt.Printf("%-11s %v\n", retry.DefaultClassifier(err), err)
	}
	// Output:
	// permanent   schema rejected
	// unavailable cluster is down
	// unavailable publish: EOF
	// unavailable publish: context canceled
	// unavailable kafka publisher: outbox: closed
	// transient   something else
}
