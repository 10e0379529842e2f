// Package delivery carries what the forwarder's handler did with one
// delivery of an outbox row to the subscriber that decides the row's fate.
//
// Watermill's Ack and Nack say only what the router, after all its
// middlewares, made of the message: PoisonQueue acks a message whose
// publish failed, InstantAck acks one before it is handled, Deduplicator
// acks one it never handed on. The handler therefore records, in a Record
// carried by the message's context, whether the destination accepted the
// message, and the subscriber settles the row by that record alone.
package delivery

import (
	"context"
	"errors"
	"sync"

	"github.com/e0a82c8c/watermill-outbox/retry"
)

// Verdict is what happened to one delivery, as the subscriber settles it.
type Verdict struct {
	// Recorded is false when the handler never ran (or ran after the
	// subscriber gave up waiting for it): the router acked or nacked a
	// message nobody published.
	Recorded bool
	// Published: the destination's Publish returned nil.
	Published bool
	// Kind and Err describe the failure when recorded and not published.
	Kind retry.Kind
	Err  error
}

type state int

const (
	idle    state = iota // handed out, handler not entered
	running              // in the handler
	done                 // the handler recorded its outcome
	sealed               // the subscriber took the verdict; nothing more is recorded
)

// Record is one delivery's slot. The zero value is not usable: use New.
type Record struct {
	mu      sync.Mutex
	state   state
	verdict Verdict
	begun   chan struct{} // closed on the first Begin
	ended   chan struct{} // closed on End after a Begin; replaced by the next Begin
}

// New returns an idle Record.
func New() *Record {
	return &Record{begun: make(chan struct{}), ended: make(chan struct{})}
}

type key struct{}

// WithRecord returns ctx carrying r.
func WithRecord(ctx context.Context, r *Record) context.Context {
	return context.WithValue(ctx, key{}, r)
}

// FromContext returns the Record ctx carries, or nil.
func FromContext(ctx context.Context) *Record {
	r, _ := ctx.Value(key{}).(*Record)
	return r
}

// ErrSettled is returned by Begin when the subscriber has settled the row
// already (it gave up waiting, or the delivery ended): publishing now could
// overtake the row's next delivery.
var ErrSettled = errors.New("outbox: this delivery is settled already; not publishing it again")

// Begin marks the handler as running. It returns published = true, and
// publishes nothing more, when an earlier call of the handler for this
// delivery published it (a router middleware calling the handler again
// must not publish it twice), and ErrSettled when the subscriber has taken
// its verdict.
func (r *Record) Begin() (published bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case sealed:
		return false, ErrSettled
	case done:
		if r.verdict.Published {
			return true, nil
		}
		r.ended = make(chan struct{})
	case running:
		return false, errors.New("outbox: this delivery is being handled already")
	case idle:
		close(r.begun)
	}
	r.state = running
	return false, nil
}

// End records the outcome of the handler call Begin started: err nil means
// the destination accepted the message; otherwise kind says what the
// failure is.
func (r *Record) End(kind retry.Kind, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != running {
		return
	}
	r.state = done
	r.verdict = Verdict{Recorded: true, Published: err == nil, Kind: kind, Err: err}
	if err == nil {
		r.verdict.Kind = 0
	}
	close(r.ended)
}

// Begun is closed once the handler has been entered.
func (r *Record) Begun() <-chan struct{} { return r.begun }

// Ended returns a channel closed when the current handler call has
// recorded its outcome (at once if one is recorded and none is running),
// and whether the handler is running or has recorded one at all.
func (r *Record) Ended() (ch <-chan struct{}, started bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ended, r.state == running || r.state == done
}

// Seal takes the verdict: what the handler recorded, or, if it is not
// running and recorded nothing, an unrecorded verdict. After Seal the
// handler can neither start nor record. ok is false while the handler is
// running: wait for Ended and seal again.
func (r *Record) Seal() (v Verdict, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case running:
		return Verdict{}, false
	case idle:
		r.verdict = Verdict{}
	}
	r.state = sealed
	return r.verdict, true
}
