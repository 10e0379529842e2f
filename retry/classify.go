package retry

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Classifier tells what kind of failure a publish error is. It must return
// Transient, Unavailable or Permanent; the middleware treats anything else
// as Transient.
type Classifier func(err error) Kind

// kindError marks err with a verdict for DefaultClassifier. It is
// transparent: same message, and errors.Is/As see err.
type kindError struct {
	kind Kind
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// PermanentError wraps err so that DefaultClassifier calls it Permanent: the
// row is dead at once. The message and errors.Is/As are unchanged. A nil err
// returns nil.
func PermanentError(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: Permanent, err: err}
}

// UnavailableError wraps err so that DefaultClassifier calls it Unavailable:
// the claim is released without charging an attempt. The message and
// errors.Is/As are unchanged. A nil err returns nil.
func UnavailableError(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: Unavailable, err: err}
}

// MarkedKind returns the kind err was marked with by PermanentError or
// UnavailableError (the outermost mark wins), if any.
func MarkedKind(err error) (Kind, bool) {
	var marked *kindError
	if errors.As(err, &marked) {
		return marked.kind, true
	}
	return 0, false
}

// DefaultClassifier classifies publish errors by what they say about the
// destination, looking through every layer of wrapping (fmt.Errorf %w,
// errors.Join and anything with Unwrap), in this order:
//
//  1. PermanentError or UnavailableError: the outermost mark wins. The
//     publishers of package sink mark their errors so: they know which of
//     Kafka's and RabbitMQ's errors blame the message and which the broker.
//  2. Unavailable: the destination cannot be reached, so no row is to blame:
//     watermilloutbox.ErrClosed (the publisher was closed: shutdown);
//     context.Canceled and context.DeadlineExceeded; any net.Error
//     (including *net.OpError and syscall errnos), syscall.ECONNREFUSED,
//     ECONNRESET, EPIPE, io.EOF and io.ErrUnexpectedEOF.
//  3. Everything else is Transient: one attempt is charged, and the row is
//     dead once its retry budget is spent.
//
// A publisher from outside package sink can mark its own errors, or the
// forwarder can be given a Classifier that knows them (see
// forwarder.Config.Classifier). A nil err is Transient; the middleware
// never classifies nil.
func DefaultClassifier(err error) Kind {
	if err == nil {
		return Transient
	}
	if k, ok := MarkedKind(err); ok {
		return k
	}
	if isUnavailable(err) {
		return Unavailable
	}
	return Transient
}

// unavailableErrors are sentinels meaning the destination is unreachable or
// not accepting writes right now, whatever the message.
var unavailableErrors = []error{
	outbox.ErrClosed,
	context.Canceled,
	context.DeadlineExceeded,
	io.EOF,
	io.ErrUnexpectedEOF,
	syscall.ECONNREFUSED,
	syscall.ECONNRESET,
	syscall.EPIPE,
}

func isUnavailable(err error) bool {
	for _, target := range unavailableErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}
