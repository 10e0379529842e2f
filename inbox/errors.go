package inbox

import "errors"

var (
	// ErrOutputWithoutOutbox is returned, and the delivery rolled back, when
	// a handler returns messages but the inbox has no Config.Outbox, or the
	// handler no publish topic: the router would publish them after the
	// commit, and were that to fail the redelivery would be dropped as a
	// duplicate, losing them.
	ErrOutputWithoutOutbox = errors.New("inbox: handler returned messages, but they have no outbox to go to in its transaction")

	// ErrInvalidUUID is returned for a message whose UUID is empty or
	// longer than MaxUUIDLen: it cannot be recorded, so it is never
	// handled.
	ErrInvalidUUID = errors.New("inbox: invalid message UUID")
)
