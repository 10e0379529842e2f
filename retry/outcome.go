package retry

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Outcome is a slot for the verdict on one message. Watermill's Nack carries
// no reason, so the subscriber that emits the message puts an Outcome in its
// context (ContextWithOutcome), the middleware records the verdict in it
// (Report), and the subscriber reads it when the message is nacked (Get).
//
// It is safe for concurrent use.
type Outcome struct {
	mu   sync.Mutex
	kind Kind
	err  error
	set  bool
}

type outcomeKey struct{}

// ContextWithOutcome returns a copy of ctx carrying a new, empty Outcome, and
// that Outcome. Use a fresh one for every delivery of a message.
func ContextWithOutcome(ctx context.Context) (context.Context, *Outcome) {
	o := &Outcome{}
	return context.WithValue(ctx, outcomeKey{}, o), o
}

// OutcomeFromContext returns the Outcome put in ctx by ContextWithOutcome,
// if any.
func OutcomeFromContext(ctx context.Context) (*Outcome, bool) {
	o, ok := ctx.Value(outcomeKey{}).(*Outcome)
	return o, ok && o != nil
}

// Set records the verdict, replacing any recorded before.
func (o *Outcome) Set(kind Kind, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.kind, o.err, o.set = kind, err, true
}

// Get returns the recorded verdict; ok is false if none was recorded.
func (o *Outcome) Get() (kind Kind, err error, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.kind, o.err, o.set
}

// Report records the verdict in the Outcome of msg's context. It returns
// false, and records nothing, if the context has none (the message did not
// come from a subscriber that reads verdicts).
func Report(msg *message.Message, kind Kind, err error) bool {
	o, ok := OutcomeFromContext(msg.Context())
	if !ok {
		return false
	}
	o.Set(kind, err)
	return true
}
