package forwarder

import (
	"github.com/ThreeDotsLabs/watermill"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// SubscriberConfig lets the external tests make plain subscribers.
type SubscriberConfig = subscriberConfig

// NewSubscriber returns a plain Subscriber: the consumer's ack is the
// verdict on each row, as for any Watermill subscriber (Watermill's
// universal suite and the loop tests run it).
func NewSubscriber(store outbox.Store, config SubscriberConfig, logger watermill.LoggerAdapter) (*Subscriber, error) {
	return newSubscriber(store, config, logger, ackVerdicts{}, nil, "")
}
