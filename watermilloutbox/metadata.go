package watermilloutbox

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys the outbox reads or writes.
const (
	// PartitionKeyMetadataKey names the message's partition key: the Kafka
	// message key, and the key whose messages the relay publishes in the
	// order they were written. Messages without it have no order promise.
	PartitionKeyMetadataKey = "partition_key"

	// EventNameMetadataKey holds the event name the EventBus publishes
	// (Watermill's cqrs "name" convention).
	EventNameMetadataKey = "name"

	// MessageUUIDMetadataKey is the header both sinks put the message UUID
	// in (Watermill's Kafka and AMQP convention). A message carrying it in
	// its metadata would send two of them, so Publish refuses it.
	MessageUUIDMetadataKey = "_watermill_message_uuid"

	// OutboxIDMetadataKey, AttemptMetadataKey and TopicMetadataKey are
	// the keys the relay adds to the messages its subscriber emits, for the
	// router's handlers and middlewares to read. The forwarder removes them
	// again before publishing to the broker, so the broker sees the
	// metadata exactly as written.
	//
	// OutboxIDMetadataKey holds the row's id (decimal).
	OutboxIDMetadataKey = "outbox_id"
	// AttemptMetadataKey holds the number of this publish attempt,
	// starting at 1 (decimal).
	AttemptMetadataKey = "outbox_attempt"
	// TopicMetadataKey holds the row's destination topic.
	TopicMetadataKey = "outbox_topic"
)

// maxPartitionKeyLen is the longest partition key stored, in bytes: it fits
// MySQL's VARCHAR(255) column and, with a topic of maxTopicLen, PostgreSQL's
// and SQLite's index entries, and Kafka's record key.
const maxPartitionKeyLen = 255

// metadataEntryOverhead is what Publish counts per metadata entry on top of
// its key and value bytes: the brokers' per-header framing (an AMQP table
// entry's key length, type and value length take 6 bytes; Kafka's varints
// fewer), so many tiny entries cannot slip a frame past the limit.
const metadataEntryOverhead = 8

// DefaultForbiddenMetadataKeys returns the metadata keys a Publisher
// refuses when PublisherConfig.ForbiddenMetadataKeys is nil: credentials
// that would outlive the request in a table and travel to every consumer.
func DefaultForbiddenMetadataKeys() []string {
	return []string{"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
}

// normalMetadataKey is how keys are compared with the forbidden ones:
// trimmed of spaces and NULs, lower case, '_' read as '-' (the CGI
// spelling of a header name).
func normalMetadataKey(key string) string {
	key = strings.TrimFunc(key, func(r rune) bool { return unicode.IsSpace(r) || r == 0 })
	return strings.ReplaceAll(strings.ToLower(key), "_", "-")
}

// forbiddenKeys is a normalised set of forbidden metadata keys.
type forbiddenKeys map[string]bool

func newForbiddenKeys(keys []string) forbiddenKeys {
	if keys == nil {
		keys = DefaultForbiddenMetadataKeys()
	}
	set := make(forbiddenKeys, len(keys))
	for _, k := range keys {
		set[normalMetadataKey(k)] = true
	}
	return set
}

// defaultForbidden is DefaultForbiddenMetadataKeys as a set.
var defaultForbidden = newForbiddenKeys(nil)

// IsRelayMetadataKey reports whether key is one of the relay's keys
// (OutboxIDMetadataKey, AttemptMetadataKey, TopicMetadataKey),
// which never reach the broker.
func IsRelayMetadataKey(key string) bool {
	switch key {
	case OutboxIDMetadataKey, AttemptMetadataKey, TopicMetadataKey:
		return true
	}
	return false
}

// reservedMetadataKey reports keys the relay or the sinks own: a message
// carrying one would have it dropped or doubled on the way to the broker.
func reservedMetadataKey(key string) bool {
	return IsRelayMetadataKey(key) || key == MessageUUIDMetadataKey
}

// checkMetadata refuses metadata the outbox could not store and deliver as
// given: a reserved or forbidden key, invalid UTF-8 (JSON would rewrite it
// to U+FFFD), or more than max bytes (0: no limit) counted as
// metadataSize does. It names the message and, but for the size, the key.
func checkMetadata(uuid string, md message.Metadata, forbidden forbiddenKeys, max int) error {
	for k, v := range md {
		switch {
		case reservedMetadataKey(k):
			return fmt.Errorf("%w: message %s carries %q", ErrReservedMetadata, uuid, k)
		case forbidden[normalMetadataKey(k)]:
			return fmt.Errorf("%w: message %s carries %q", ErrForbiddenMetadata, uuid, k)
		case !utf8.ValidString(k):
			return fmt.Errorf("%w: message %s: key %q is not valid UTF-8", ErrInvalidMetadata, uuid, k)
		case !utf8.ValidString(v):
			return fmt.Errorf("%w: message %s: the value of %q is not valid UTF-8", ErrInvalidMetadata, uuid, k)
		}
	}
	if n := metadataSize(md); max > 0 && n > max {
		return fmt.Errorf("%w: message %s has %d bytes of metadata, the limit (MaxMetadataBytes) is %d",
			ErrMetadataTooLarge, uuid, n, max)
	}
	return nil
}

// metadataSize is the size MaxMetadataBytes bounds: every key's and
// value's bytes, plus metadataEntryOverhead per entry.
func metadataSize(md message.Metadata) int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v) + metadataEntryOverhead
	}
	return n
}

// validatePartitionKey accepts "" (no key) or at most 255 bytes of valid
// UTF-8 without NUL; anything else is ErrInvalidPartitionKey. Publish checks
// the key in the PartitionKeyMetadataKey entry with it.
func validatePartitionKey(key string) error {
	switch {
	case len(key) > maxPartitionKeyLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidPartitionKey, len(key), maxPartitionKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidPartitionKey, key)
	case strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("%w: %q contains NUL", ErrInvalidPartitionKey, key)
	}
	return nil
}
