package retry

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/IBM/sarama"
	amqp "github.com/rabbitmq/amqp091-go"
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

// DefaultClassifier classifies the errors of the Kafka (watermill-kafka/v3,
// IBM/sarama) and RabbitMQ (watermill-amqp/v2, amqp091-go) publishers. It
// looks through every layer of wrapping (fmt.Errorf %w, github.com/pkg/errors,
// errors.Join, hashicorp/go-multierror, sarama.ProducerError), in this order:
//
//  1. PermanentError or UnavailableError: the outermost mark wins.
//  2. sarama.ProducerErrors (a batch): Permanent if any element is,
//     Unavailable if all are, Transient otherwise.
//  3. Permanent: the message itself is unacceptable.
//     - Kafka: ErrMessageSizeTooLarge, ErrMessageSetSizeTooLarge
//     (RECORD_LIST_TOO_LARGE), ErrInvalidRecord, ErrInvalidTopic, and
//     sarama's own "Attempt to produce message larger than configured
//     Producer.MaxMessageBytes" ConfigurationError.
//     - AMQP: codes 311 ContentTooLarge and 312 NoRoute, and RabbitMQ's 406
//     "message size … is larger than … max size".
//     - Both: "cannot marshal message …", how both Watermill publishers wrap
//     a marshaler error; their marshalers fail only on the message itself.
//  4. Unavailable: the destination cannot be reached, so no row is to blame.
//     - context.Canceled (shutdown must not charge attempts) and
//     context.DeadlineExceeded.
//     - Network: any net.Error (including *net.OpError and syscall errnos),
//     syscall.ECONNREFUSED, ECONNRESET, EPIPE, io.EOF, io.ErrUnexpectedEOF.
//     - Kafka: ErrOutOfBrokers, ErrNotConnected, ErrClosedClient,
//     ErrShuttingDown, ErrBrokerNotAvailable, ErrLeaderNotAvailable,
//     ErrNotLeaderForPartition, ErrReplicaNotAvailable, ErrRequestTimedOut,
//     ErrNetworkException, ErrNotEnoughReplicas(AfterAppend),
//     ErrKafkaStorageError, ErrOutOfOrderSequenceNumber; sarama's "circuit
//     breaker is open" and "message out of sequence added to a batch" (its
//     producer's own state after other failures); watermill-kafka's
//     "publisher closed".
//     - AMQP: amqp.ErrClosed and the connection-level codes 320
//     ConnectionForced, 501 FrameError (amqp091 reports a broken socket so),
//     504 ChannelError, 505 UnexpectedFrame and 506 ResourceError;
//     watermill-amqp's "not connected to AMQP" and "pub/sub is connection
//     closedChan".
//  5. Everything else is Transient, including errors operators can fix
//     while rows wait: authorization failures (sarama
//     ErrTopicAuthorizationFailed, AMQP 403), missing topology (sarama
//     ErrUnknownTopicOrPartition, AMQP 404 NotFound: a topic or exchange
//     may be created later), other sarama ConfigurationErrors, AMQP 406,
//     and a broker's negative publisher confirm ("delivery not confirmed").
//
// Caveats. Kafka rejects a record batch as a whole, and sarama batches
// concurrent sends to one partition up to Producer.MaxMessageBytes: if that
// exceeds the topic's max.message.bytes, small messages sharing a batch with
// a large one are rejected as too large too. Keep Producer.MaxMessageBytes at
// or below the topic's limit (sarama then rejects a large message alone,
// before sending). With publisher confirms, RabbitMQ's 406 for an oversized
// message closes the channel and reaches watermill-amqp only as "delivery
// not confirmed", which is Transient: such a message dies when its budget is
// spent.
//
// A nil err is Transient; the middleware never classifies nil.
func DefaultClassifier(err error) Kind {
	if err == nil {
		return Transient
	}
	var marked *kindError
	if errors.As(err, &marked) && marked.kind.valid() {
		return marked.kind
	}
	var batch sarama.ProducerErrors
	if errors.As(err, &batch) && len(batch) > 0 {
		return classifyBatch(batch)
	}
	switch {
	case isPermanent(err):
		return Permanent
	case isUnavailable(err):
		return Unavailable
	default:
		return Transient
	}
}

// classifyBatch classifies the errors of a sarama batch; it has no Unwrap,
// so errors.Is and errors.As do not look inside.
func classifyBatch(batch sarama.ProducerErrors) Kind {
	unavailable := 0
	for _, pe := range batch {
		if pe == nil {
			unavailable++ // no error: blames nothing
			continue
		}
		switch DefaultClassifier(pe) {
		case Permanent:
			return Permanent
		case Unavailable:
			unavailable++
		}
	}
	if unavailable == len(batch) {
		return Unavailable
	}
	return Transient
}

// permanentKErrors are Kafka broker errors about the record itself.
var permanentKErrors = []error{
	sarama.ErrMessageSizeTooLarge,
	sarama.ErrMessageSetSizeTooLarge,
	sarama.ErrInvalidRecord,
	sarama.ErrInvalidTopic,
}

// saramaTooLarge starts the ConfigurationError sarama's producer returns for
// a message above Producer.MaxMessageBytes, before sending it.
const saramaTooLarge = "Attempt to produce message larger than configured Producer.MaxMessageBytes"

// marshalFailed starts the message both Watermill publishers wrap a
// marshaler error in ("cannot marshal message" in watermill-amqp,
// "cannot marshal message <uuid>" in watermill-kafka).
const marshalFailed = "cannot marshal message"

func isPermanent(err error) bool {
	for _, target := range permanentKErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	var cfgErr sarama.ConfigurationError
	if errors.As(err, &cfgErr) && strings.HasPrefix(string(cfgErr), saramaTooLarge) {
		return true
	}
	if code, reason, ok := amqpError(err); ok {
		switch code {
		case amqp.ContentTooLarge, amqp.NoRoute:
			return true
		case amqp.PreconditionFailed:
			// RabbitMQ: "PRECONDITION_FAILED - message size N is larger
			// than [configured ]max size M".
			if strings.Contains(reason, "message size") && strings.Contains(reason, "larger than") {
				return true
			}
		}
	}
	return anyMessage(err, func(msg string) bool { return strings.HasPrefix(msg, marshalFailed) })
}

// unavailableErrors are sentinels meaning the destination is unreachable or
// not accepting writes right now, whatever the message.
var unavailableErrors = []error{
	context.Canceled,
	context.DeadlineExceeded,
	io.EOF,
	io.ErrUnexpectedEOF,
	syscall.ECONNREFUSED,
	syscall.ECONNRESET,
	syscall.EPIPE,
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
	sarama.ErrOutOfOrderSequenceNumber, // the idempotent producer's session after another message's failure, not this message
}

// unavailableMessages are errors the Watermill publishers create with
// errors.New, so only their text identifies them.
var unavailableMessages = map[string]bool{
	"publisher closed":                                           true, // watermill-kafka, after Close
	"not connected to AMQP":                                      true, // watermill-amqp, while reconnecting
	"pub/sub is connection closedChan":                           true, // watermill-amqp, after Close
	"circuit breaker is open":                                    true, // sarama (go-resiliency breaker.ErrBreakerOpen): 3 failed metadata/leader lookups in a row
	"assertion failed: message out of sequence added to a batch": true, // sarama, after another message's failure reset the sequence
}

func isUnavailable(err error) bool {
	for _, target := range unavailableErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	if code, _, ok := amqpError(err); ok {
		switch code {
		case amqp.ConnectionForced, amqp.FrameError, amqp.ChannelError, amqp.UnexpectedFrame, amqp.ResourceError:
			return true
		}
	}
	return anyMessage(err, func(msg string) bool { return unavailableMessages[msg] })
}

// amqpError finds an amqp091 error in err's chain, by pointer (as amqp091
// returns them) or by value.
func amqpError(err error) (code int, reason string, ok bool) {
	var p *amqp.Error
	if errors.As(err, &p) && p != nil {
		return p.Code, p.Reason, true
	}
	var v amqp.Error
	if errors.As(err, &v) {
		return v.Code, v.Reason, true
	}
	return 0, "", false
}

// anyMessage reports whether match accepts the message of err or of any
// error it wraps.
func anyMessage(err error, match func(msg string) bool) bool {
	if err == nil {
		return false
	}
	if match(err.Error()) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyMessage(u.Unwrap(), match)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyMessage(e, match) {
				return true
			}
		}
	}
	return false
}
