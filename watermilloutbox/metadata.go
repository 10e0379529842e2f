package watermilloutbox

import "strings"

// Metadata keys the outbox reads or writes.
const (
	// PartitionKeyMetadataKey names the message's partition key: the Kafka
	// message key, and the key whose messages the relay publishes in the
	// order they were written. Messages without it have no order promise.
	PartitionKeyMetadataKey = "partition_key"

	// EventNameMetadataKey holds the event name the EventBus publishes
	// (Watermill's cqrs "name" convention).
	EventNameMetadataKey = "name"
)

// forbiddenMetadataKey reports keys that must never be stored in the outbox:
// credentials would outlive the request in a table and travel to the broker.
func forbiddenMetadataKey(key string) bool {
	return strings.EqualFold(strings.TrimSpace(key), "authorization")
}
