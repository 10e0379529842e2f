package forwarder

import (
	"github.com/ThreeDotsLabs/watermill"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// SubscriberConfig lets the external tests make plain subscribers.
type SubscriberConfig = subscriberConfig

// NewSubscriber returns a plain Subscriber: the consumer's ack is the
// verdict on each row, as for any Watermill subscriber (Watermill's
// universal suite and the loop tests run it).
func NewSubscriber(store relaystore.Store, config SubscriberConfig, logger watermill.LoggerAdapter) (*Subscriber, error) {
	return newSubscriber(store, config, logger, ackVerdicts{}, nil, "")
}

// ParseTopicFilter is parseTopicFilter, for the tests of package
// forwarder_test.
var ParseTopicFilter = parseTopicFilter
