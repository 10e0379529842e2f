package forwarder

import (
	"context"

	"github.com/e0a82c8c/watermill-outbox/internal/delivery"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/retry"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// failureKind maps a verdict to the kind observed.
func failureKind(v delivery.Verdict) observe.FailureKind {
	switch {
	case !v.Recorded:
		return observe.FailureUnhandled
	case v.Kind == retry.Unavailable:
		return observe.FailureUnavailable
	case v.Kind == retry.Permanent:
		return observe.FailurePermanent
	}
	return observe.FailureTransient
}

// rowCtx is the parent of an emitted message's context: it carries the row
// to the forwarder's handler (for its span and its lag) without a context
// allocation of its own, since it lives inside the held row.
type rowCtx struct {
	context.Context
	row *relaystore.Row
	// lapses is the relay's lapse count when the row was handed out (see
	// Subscriber.mayPublish); set by the loop before it hands the row out.
	lapses int64
}

type (
	rowKey    struct{}
	lapsesKey struct{}
)

func (c *rowCtx) Value(key any) any {
	switch key {
	case rowKey{}:
		return c.row
	case lapsesKey{}:
		return c.lapses
	}
	return c.Context.Value(key)
}

// rowFromContext returns the row an emitted message's context carries, or
// nil when a router middleware replaced the context.
func rowFromContext(ctx context.Context) *relaystore.Row {
	r, _ := ctx.Value(rowKey{}).(*relaystore.Row)
	return r
}
