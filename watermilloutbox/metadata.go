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

// Metadata keys the relay adds to the messages its subscriber emits. The
// forwarder removes them again before publishing to the broker, so the
// broker sees the metadata exactly as written.
const (
	// OutboxIDMetadataKey holds the row's id (decimal).
	OutboxIDMetadataKey = "outbox_id"
	// AttemptMetadataKey holds the number of this publish attempt,
	// starting at 1 (decimal).
	AttemptMetadataKey = "outbox_attempt"
	// TopicMetadataKey holds the row's destination topic.
	TopicMetadataKey = "outbox_topic"
)

// IsRelayMetadataKey reports whether key is one of the relay's keys above,
// which never reach the broker.
func IsRelayMetadataKey(key string) bool {
	switch key {
	case OutboxIDMetadataKey, AttemptMetadataKey, TopicMetadataKey:
		return true
	}
	return false
}
