package inbox

import "time"

// Observer learns the outcome of every delivery the middleware sees.
// metrics.Inbox implements it. It is called on the handler's goroutine, so
// it must be quick.
type Observer interface {
	ObserveDelivery(DeliveryEvent)
}

// Outcome is what became of a delivery.
type Outcome string

const (
	// Handled: the handler ran and its transaction committed.
	Handled Outcome = "handled"
	// Duplicate: the message had been applied already; it was acked
	// without running the handler.
	Duplicate Outcome = "duplicate"
	// Failed: the handler, the record or the commit failed; everything
	// was rolled back and the message nacked.
	Failed Outcome = "failed"
)

// DeliveryEvent describes one delivery.
type DeliveryEvent struct {
	Consumer string
	// Handler is the router handler's name, "" outside a router.
	Handler string
	Outcome Outcome
	// Duration is the whole delivery: transaction, handler and commit.
	Duration time.Duration
}
