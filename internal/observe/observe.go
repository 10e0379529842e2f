// Package observe is the relay's observer hook: the events a forwarder
// reports (claims, publishes, failures, dead rows, fenced writes, pauses,
// heartbeats) and the Observer that package metrics implements for
// Prometheus.
package observe

import (
	"time"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// Observer is told what a forwarder's relay does, for metrics: package
// metrics implements it for Prometheus. It is set in the forwarder's
// Config.Observer; nil means nobody is told, at no cost.
//
// The methods are called from the relay's goroutines, concurrently, and
// ObservePublish once for every message relayed: they must be safe for
// concurrent use, quick, and must not block. The events are values; a
// slice in them (ClaimEvent.Rows) belongs to the relay and must not be
// kept or changed.
type Observer interface {
	// ObserveClaim: one claim of the relay ended, with the rows it took or
	// the error it met (then it is retried with backoff).
	ObserveClaim(ClaimEvent)
	// ObservePublish: the destination accepted one message (its Publish
	// returned nil).
	ObservePublish(PublishEvent)
	// ObserveFailure: one delivery of a row ended without the destination
	// accepting it; the row is retried, dead or released (see
	// FailureKind). In-process quick retries are part of the one delivery;
	// an unavailable destination is observed at each failed attempt, as it
	// happens (the row is retried in place meanwhile).
	ObserveFailure(FailureEvent)
	// ObserveDead: a row became dead (its MarkDead write changed it).
	ObserveDead(DeadEvent)
	// ObserveWrite: one fenced write of the relay (one try of it: a write
	// that failed is retried and observed again).
	ObserveWrite(WriteEvent)
	// ObservePause: the relay paused because the destination is
	// unavailable, or resumed (forwarder.Forwarder.Paused, as it changes).
	ObservePause(PauseEvent)
	// ObserveBeat: one heartbeat of the relay in the store's relay
	// registry ended (see forwarder.Forwarder.Heartbeat); none with a store that has
	// no registry.
	ObserveBeat(BeatEvent)
}

// NopObserver does nothing; embed it in an Observer that implements only
// some of the methods.
type NopObserver struct{}

func (NopObserver) ObserveClaim(ClaimEvent)     {}
func (NopObserver) ObservePublish(PublishEvent) {}
func (NopObserver) ObserveFailure(FailureEvent) {}
func (NopObserver) ObserveDead(DeadEvent)       {}
func (NopObserver) ObserveWrite(WriteEvent)     {}
func (NopObserver) ObservePause(PauseEvent)     {}
func (NopObserver) ObserveBeat(BeatEvent)       {}

var _ Observer = NopObserver{}

// ClaimEvent is one claim.
type ClaimEvent struct {
	// Handler is the forwarder's Config.HandlerName.
	Handler string
	// Rows are the rows claimed, in id order (Row.Reclaimed marks those
	// taken over from an expired lease). Read them only during the call.
	Rows []relaystore.Row
	// TakenOver counts the rows of Rows taken from relays declared dead
	// (their heartbeat expired) before their lease ended.
	TakenOver int
	// Duration is how long Store.Claim took.
	Duration time.Duration
	// Err is the claim's error; Rows is empty then.
	Err error
}

// PublishEvent is one message the destination accepted.
type PublishEvent struct {
	Handler string
	// Topic is the destination topic.
	Topic string
	// CreatedAt is when the publishing transaction inserted the row, by the
	// database's clock; ConfirmedAt is when the destination's Publish
	// returned nil, by the relay's clock. Their difference is the
	// commit-to-broker lag, off by the skew between the two clocks.
	CreatedAt, ConfirmedAt time.Time
}

// FailureKind says why a delivery failed. Its values are the label values
// of package metrics, so the set stays small.
type FailureKind string

const (
	// FailureTransient: the destination refused the message with an error
	// that may pass (retry.Transient): one attempt is charged, the row is
	// retried after backoff, or dead once its budget is spent.
	FailureTransient FailureKind = "transient"
	// FailureUnavailable: an attempt found the destination unreachable
	// (retry.Unavailable); observed for each such attempt, while the row is
	// retried in place (and released uncharged should the relay stop).
	FailureUnavailable FailureKind = "unavailable"
	// FailurePermanent: the destination can never take the message
	// (retry.Permanent): the row is dead at once.
	FailurePermanent FailureKind = "permanent"
	// FailureUnhandled: the router acked or nacked the message without
	// the forwarder's handler recording an outcome (a middleware such as
	// Deduplicator skipped it, or one failed before it): charged as a
	// transient attempt.
	FailureUnhandled FailureKind = "unhandled"
)

// FailureEvent is one failed delivery.
type FailureEvent struct {
	Handler string
	Topic   string
	Kind    FailureKind
	// Err is the destination's error, or why the delivery counts as failed.
	Err error
}

// DeadEvent is a row that became dead.
type DeadEvent struct {
	Handler string
	Topic   string
	// Err is the last error stored with the row.
	Err error
}

// WriteOp names a fenced write of the relay. Its values are the label
// values of package metrics.
type WriteOp string

// The fenced writes, by the Store method that makes them.
const (
	WriteMarkPublished WriteOp = "mark_published" // acks, in batches
	WriteRecordFailure WriteOp = "record_failure"
	WriteMarkDead      WriteOp = "mark_dead"
	WriteRelease       WriteOp = "release"
	WriteRenew         WriteOp = "renew"
)

// WriteEvent is one try of a fenced write.
type WriteEvent struct {
	Handler string
	Op      WriteOp
	// Rows is how many rows the write named; Changed how many it changed.
	// Changed < Rows (with Err nil) means the others' claim was stale: their
	// lease had expired and another claim took them over, so the write was
	// rejected for them (fencing).
	Rows, Changed int
	// Duration is how long the Store call took.
	Duration time.Duration
	// Err is the write's error; it is retried then.
	Err error
}

// Stale returns how many rows the write was rejected for: Rows - Changed
// when it succeeded, 0 when it failed.
func (e WriteEvent) Stale() int {
	if e.Err != nil || e.Changed >= e.Rows {
		return 0
	}
	return e.Rows - e.Changed
}

// PauseEvent is a change of forwarder.Forwarder.Paused.
type PauseEvent struct {
	Handler string
	// Paused is true while the relay waits for the destination to be
	// reachable again; Since is when that began (zero when resumed).
	Paused bool
	Since  time.Time
}

// BeatEvent is one heartbeat.
type BeatEvent struct {
	Handler string
	// Relay is the relay's id in the registry.
	Relay string
	// Sent is when the beat was sent (local clock); Duration how long the
	// store took.
	Sent     time.Time
	Duration time.Duration
	// Lapsed: the beat found the relay declared dead (its previous beat had
	// expired); it registered again.
	Lapsed bool
	// Err is the beat's error; the relay beats again RelayTimeout/3 later.
	Err error
}
