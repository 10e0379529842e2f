package watermilloutbox

import "errors"

var (
	// ErrNoTransaction is returned by Publish when neither a bound
	// transaction (Publisher.WithTx), nor one carried in the messages'
	// context (ContextWithTx), is available and AutoCommit is off.
	ErrNoTransaction = errors.New("outbox: no transaction: bind one with WithTx or ContextWithTx")

	// ErrClosed is returned by Publish after Close.
	ErrClosed = errors.New("outbox: publisher closed")

	// ErrInvalidTableName is returned, before any SQL runs, for a table name
	// that is not a plain SQL identifier, optionally schema-qualified.
	ErrInvalidTableName = errors.New("outbox: invalid table name")

	// ErrInvalidTopic is returned for an empty topic or one with whitespace or
	// control characters.
	ErrInvalidTopic = errors.New("outbox: invalid topic")

	// ErrPayloadTooLarge is returned when a payload exceeds the configured
	// MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("outbox: payload too large")

	// ErrForbiddenMetadata is returned for a message that carries a metadata
	// key that must never be stored, such as "authorization".
	ErrForbiddenMetadata = errors.New("outbox: forbidden metadata key")

	// ErrUnknownDialect is returned for a Dialect this package does not know.
	ErrUnknownDialect = errors.New("outbox: unknown SQL dialect")
)
