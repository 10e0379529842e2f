package sink

import (
	"errors"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// classifyAMQPError marks an error of an amqp091-go (or watermill-amqp/v2)
// publisher for retry.DefaultClassifier, as AMQPPublisher's documentation
// lists. An error marked already keeps its mark; nil stays nil.
func classifyAMQPError(err error) error {
	if err == nil {
		return nil
	}
	return mark(err, amqpKind(err))
}

func amqpKind(err error) retry.Kind {
	if k, ok := retry.MarkedKind(err); ok {
		return k
	}
	if errors.Is(err, amqp.ErrClosed) {
		return retry.Unavailable
	}
	if code, reason, ok := amqpError(err); ok {
		switch code {
		case amqp.ContentTooLarge, amqp.NoRoute:
			return retry.Permanent
		case amqp.PreconditionFailed:
			// RabbitMQ: "PRECONDITION_FAILED - message size N is larger
			// than [configured ]max size M".
			if strings.Contains(reason, "message size") && strings.Contains(reason, "larger than") {
				return retry.Permanent
			}
		case amqp.AccessRefused:
			// RabbitMQ: "ACCESS_REFUSED - exchange name 'amq.x' contains
			// reserved prefix 'amq.*'" (queues likewise): the topic's name
			// can never be declared, whatever an operator grants.
			if strings.Contains(reason, "reserved prefix") {
				return retry.Permanent
			}
		case amqp.ConnectionForced, amqp.FrameError, amqp.ChannelError, amqp.UnexpectedFrame, amqp.ResourceError:
			return retry.Unavailable
		}
	}
	if anyMessage(err, func(msg string) bool { return strings.HasPrefix(msg, marshalFailed) }) {
		return retry.Permanent
	}
	if anyMessage(err, func(msg string) bool { return unavailableAMQPMessages[msg] }) {
		return retry.Unavailable
	}
	return retry.DefaultClassifier(err)
}

// unavailableAMQPMessages are errors watermill-amqp creates with errors.New.
var unavailableAMQPMessages = map[string]bool{
	"not connected to AMQP":            true, // while reconnecting
	"pub/sub is connection closedChan": true, // after Close
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
