package watermilloutbox

import "errors"

var (
	// ErrNoTransaction is returned by Publish when neither a bound
	// transaction (Publisher.WithTx), nor one carried in the messages'
	// context (ContextWithTx), is available and AutoCommit is off.
	ErrNoTransaction = errors.New("outbox: no transaction: bind one with WithTx or ContextWithTx")

	// ErrClosed is returned by whatever the outbox closed: Publish after the
	// Publisher's Close, Subscribe and Run after the relay's Close, and a
	// sink's Publish after its Close (package sink). Errors wrapping it are
	// Unavailable to retry.DefaultClassifier: closing is shutdown, never the
	// message's fault.
	ErrClosed = errors.New("outbox: closed")

	// ErrInvalidTableName is returned, before any SQL runs, for a table name
	// that is not a plain SQL identifier, optionally schema-qualified (see
	// config.Config.Table).
	ErrInvalidTableName = errors.New("outbox: invalid table name")

	// ErrInvalidTopic is returned for an empty topic or one with whitespace or
	// control characters.
	ErrInvalidTopic = errors.New("outbox: invalid topic")

	// ErrPayloadTooLarge is returned when a payload exceeds the configured
	// MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("outbox: payload too large")

	// ErrForbiddenMetadata is returned for a message that carries a metadata
	// key that must never be stored, such as "authorization" (see
	// PublisherConfig.ForbiddenMetadataKeys).
	ErrForbiddenMetadata = errors.New("outbox: forbidden metadata key")

	// ErrReservedMetadata is returned for a message that carries a metadata
	// key the relay or the sinks own: OutboxIDMetadataKey,
	// AttemptMetadataKey, TopicMetadataKey or MessageUUIDMetadataKey. It
	// would be dropped or doubled on the way to the broker.
	ErrReservedMetadata = errors.New("outbox: reserved metadata key")

	// ErrInvalidMetadata is returned for a message whose metadata holds a
	// key or value that is not valid UTF-8: it could not be stored and
	// delivered exactly.
	ErrInvalidMetadata = errors.New("outbox: invalid metadata")

	// ErrMetadataTooLarge is returned when a message's metadata exceeds
	// MaxMetadataBytes (see config.Config).
	ErrMetadataTooLarge = errors.New("outbox: metadata too large")

	// ErrInvalidPartitionKey is returned for a partition key (the
	// PartitionKeyMetadataKey entry) longer than 255 bytes, not valid UTF-8
	// or containing NUL.
	ErrInvalidPartitionKey = errors.New("outbox: invalid partition key")

	// ErrUnknownDialect is returned for a Dialect this package does not know.
	ErrUnknownDialect = errors.New("outbox: unknown SQL dialect")

	// ErrDialectMismatch is returned by Migrate, and by the first Claim or
	// Publish, when the database behind the connection is not the one the
	// Dialect names (the PostgreSQL dialect on a MySQL connection, say):
	// without the check the first INSERT would fail with a syntax error.
	ErrDialectMismatch = errors.New("outbox: dialect does not match the database")

	// ErrUnhandledEvent is returned by EventBus.Publish for an event that is
	// neither an IntegrationEvent nor has a domain handler: it would go
	// nowhere. Nothing is written.
	ErrUnhandledEvent = errors.New("outbox: event is neither an integration event nor handled by a domain handler")

	// ErrNotBlocked is returned by RequeueKey and SkipKey when the key has
	// no head holding it back (it is not listed by BlockedKeys).
	ErrNotBlocked = errors.New("outbox: key is not blocked")
)
