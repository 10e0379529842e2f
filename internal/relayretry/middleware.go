// Package relayretry is the relay's publish middleware: it classifies a
// publish error (a retry.Kind), retries Transient failures in process, and
// pauses every handler while the destination is unavailable (a circuit).
// The forwarder runs it inside its own handler; package retry describes the
// kinds, package forwarder how a verdict settles a row.
package relayretry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Middleware defaults not taken from package config.
const (
	// DefaultQuickRetryDelay is the pause before an in-process retry.
	DefaultQuickRetryDelay = 100 * time.Millisecond

	// DefaultCircuitMinBackoff is the first pause after the destination
	// was found unavailable.
	DefaultCircuitMinBackoff = 100 * time.Millisecond
)

// DefaultCircuitMaxBackoff caps the pause while the destination stays
// unavailable: config.DefaultUnavailableBackoffMax (1s), so a relay probes
// a broker that is down about once a second and resumes within about a
// second of its return.
const DefaultCircuitMaxBackoff = config.DefaultUnavailableBackoffMax

// MiddlewareConfig configures NewMiddleware. The zero value is usable.
type MiddlewareConfig struct {
	// Classifier classifies handler errors. Default retry.DefaultClassifier; nil
	// means the default.
	Classifier retry.Classifier

	// QuickRetries is how many times a Transient failure is retried in
	// process, after QuickRetryDelay, before the message is given back to
	// the outbox (which retries it after its own, longer backoff). Default
	// 0: none. Must not be negative.
	QuickRetries int

	// QuickRetryDelay is the pause before each quick retry. Default
	// DefaultQuickRetryDelay (100ms); zero means the default. Must not be
	// negative.
	QuickRetryDelay time.Duration

	// Lease is how long the subscriber owns a claimed message: use the
	// outbox's config.Config.ClaimTimeout. Quick retries stop when the next
	// one (its delay plus the slowest attempt so far) would end later than
	// half the lease after the handler started: the lease is renewed at
	// half-time, and a publish outliving the lease may be duplicated by
	// another relay. Default config.DefaultClaimTimeout (300s); zero means
	// the default. Must not be negative.
	Lease time.Duration

	// CircuitMinBackoff is the first pause of every handler after a
	// message failed Unavailable; each failed probe after a pause doubles
	// it, up to CircuitMaxBackoff (with jitter, see backoff.Jittered). Default
	// DefaultCircuitMinBackoff (100ms); zero means the default. Must not be
	// negative, nor exceed CircuitMaxBackoff.
	CircuitMinBackoff time.Duration

	// CircuitMaxBackoff caps the pause while the destination stays
	// unavailable, and so bounds how long after the broker's return the
	// relay resumes. The forwarder sets it from
	// config.Config.UnavailableBackoffMax. Default DefaultCircuitMaxBackoff
	// (1s); zero means the default. Must not be negative.
	CircuitMaxBackoff time.Duration

	// OnPause, when set, is told when the circuit opens (paused true, since
	// the moment the outage began) and when it closes again (false, zero
	// time): the state Paused reports, pushed to a metric instead of polled.
	// It is called with the circuit's lock held, so the calls arrive in the
	// order of the changes; it must be quick and must not call back into
	// the Middleware. Default nil: nobody is told.
	OnPause func(paused bool, since time.Time)

	// OnUnavailable, when set, is told of each attempt that failed because
	// the destination is unavailable, as it happens: such a message is
	// retried in place, not returned, so this is how an outage is counted
	// while it lasts. It must be quick. Default nil: nobody is told.
	OnUnavailable func(msg *message.Message, err error)
}

func (c *MiddlewareConfig) setDefaults() {
	if c.Classifier == nil {
		c.Classifier = retry.DefaultClassifier
	}
	if c.QuickRetryDelay == 0 {
		c.QuickRetryDelay = DefaultQuickRetryDelay
	}
	if c.Lease == 0 {
		c.Lease = config.DefaultClaimTimeout
	}
	if c.CircuitMinBackoff == 0 {
		c.CircuitMinBackoff = DefaultCircuitMinBackoff
	}
	if c.CircuitMaxBackoff == 0 {
		c.CircuitMaxBackoff = DefaultCircuitMaxBackoff
	}
}

// Validate reports every invalid field, joined with errors.Join. Zero fields
// that have a default are valid: NewMiddleware fills them in first.
func (c MiddlewareConfig) Validate() error {
	c.setDefaults()
	var errs []error
	if c.QuickRetries < 0 {
		errs = append(errs, fmt.Errorf("QuickRetries: must not be negative, got %d", c.QuickRetries))
	}
	if c.QuickRetryDelay < 0 {
		errs = append(errs, fmt.Errorf("QuickRetryDelay: must not be negative, got %s", c.QuickRetryDelay))
	}
	if c.Lease < 0 {
		errs = append(errs, fmt.Errorf("Lease: must not be negative, got %s", c.Lease))
	}
	if c.CircuitMinBackoff < 0 {
		errs = append(errs, fmt.Errorf("CircuitMinBackoff: must not be negative, got %s", c.CircuitMinBackoff))
	}
	if c.CircuitMaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("CircuitMaxBackoff: must not be negative, got %s", c.CircuitMaxBackoff))
	}
	if c.CircuitMinBackoff > 0 && c.CircuitMaxBackoff > 0 && c.CircuitMinBackoff > c.CircuitMaxBackoff {
		errs = append(errs, fmt.Errorf("CircuitMinBackoff: must not exceed CircuitMaxBackoff (%s), got %s",
			c.CircuitMaxBackoff, c.CircuitMinBackoff))
	}
	return errors.Join(errs...)
}

// Middleware classifies the errors of a relay handler, retries what is
// worth retrying in process, and pauses every handler while the destination
// is unavailable. Handle returns its verdict; the forwarder records it for
// the subscriber, which decides the row's fate (and spends its retry
// budget) from it. See the package documentation.
//
// One Middleware holds one circuit, shared by every message it handles:
// use one per destination.
type Middleware struct {
	config  MiddlewareConfig
	logger  watermill.LoggerAdapter
	circuit circuit
}

// NewMiddleware returns a Middleware; zero config fields take their
// defaults. A nil logger logs nothing.
func NewMiddleware(config MiddlewareConfig, logger watermill.LoggerAdapter) (*Middleware, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	m := &Middleware{config: config, logger: logger}
	m.circuit.init(config.CircuitMinBackoff, config.CircuitMaxBackoff, config.OnPause)
	return m, nil
}

// Paused reports whether handlers are pausing because the destination was
// found unavailable, and since when (zero when not paused). A relay's
// health check reads it.
func (m *Middleware) Paused() (paused bool, since time.Time) { return m.circuit.pausedSince() }

// Middleware is a message.HandlerMiddleware that runs each message through
// Handle and returns its messages and error.
func (m *Middleware) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		produced, _, err := m.Handle(h, msg)
		return produced, err
	}
}

// Handle calls h for msg and returns what h produced, the kind of its
// failure (0 when it succeeded) and the error. It:
//
//   - waits while the circuit is open, or until msg.Context() is done;
//     while it is open one message at a time probes the destination;
//   - calls h; on success, or on a failure that is not Unavailable (the
//     destination answered), closes the circuit;
//   - on an Unavailable error opens the circuit and retries the same
//     message after the pause, until it succeeds, fails otherwise, or
//     msg.Context() is done; then it returns Unavailable (the subscriber
//     releases the row uncharged) and the last error;
//   - on a Permanent error returns Permanent;
//   - on a Transient error retries up to QuickRetries times in process
//     (within half the Lease), then returns Transient.
//
// An Unavailable failure is evidence that the destination is down only
// while nothing else gets through. A message whose Unavailable failure
// keeps repeating while the destination accepts other messages (some
// between its last two failures), for at least ownFailureSpans times
// CircuitMaxBackoff since others first got through after one of them (10s
// by default; a partition's leader election is shorter), fails on its own
// (it always times out, say): Handle returns Transient, so the row is
// charged an attempt, keeps its error and is dead after MaxRetryCount. A
// failure while others got through during it does not open the circuit.
// A destination that accepts nothing still pauses every handler and
// charges no row.
func (m *Middleware) Handle(h message.HandlerFunc, msg *message.Message) ([]*message.Message, retry.Kind, error) {
	start := time.Now()
	a := m.attempt(h, msg)
	if a.err == nil || a.waitErr != nil {
		return a.result(m, msg, nil)
	}
	return m.afterFailure(h, msg, start, a)
}

// try is one call of the handler, or the wait at the circuit that ended
// before it.
type try struct {
	produced []*message.Message
	kind     retry.Kind    // of err; 0 when it succeeded
	err      error         // the handler's
	waitErr  error         // the circuit's wait ended without a call
	probe    bool          // the call probed an open circuit
	gen      uint64        // the circuit's generation of the probe
	before   uint64        // calls accepted before this one
	took     time.Duration // how long the call took
}

// attempt waits at the circuit and calls h once. A call that reached the
// destination (it succeeded or failed otherwise than Unavailable) closes
// the circuit.
//
// It is apart from the retries (afterFailure) so that the common case, a
// first call that succeeds, runs on a small stack frame: the router runs
// each message on a goroutine of its own, whose stack would otherwise be
// grown and copied for every message.
func (m *Middleware) attempt(h message.HandlerFunc, msg *message.Message) (a try) {
	a.probe, a.gen, a.waitErr = m.circuit.wait(msg.Context())
	if a.waitErr != nil {
		return a
	}
	a.before = m.circuit.acceptedCount()
	callStart := time.Now()
	a.produced, a.err = h(msg)
	a.took = time.Since(callStart)
	if a.err != nil {
		a.kind = m.classify(a.err)
	}
	if a.kind != retry.Unavailable && m.circuit.answered(a.err == nil) {
		m.logger.Info("Destination available again, resuming", nil)
	}
	return a
}

// result is Handle's answer for a try that succeeded, or whose wait at the
// circuit ended (lastErr: the error of the try before, if any).
func (a *try) result(m *Middleware, msg *message.Message, lastErr error) ([]*message.Message, retry.Kind, error) {
	if a.waitErr != nil {
		return nil, retry.Unavailable, m.released(msg, lastErr, a.waitErr)
	}
	return a.produced, 0, nil
}

// afterFailure decides what follows the failed try a of msg, whose first
// try began at start, and retries as Handle says.
func (m *Middleware) afterFailure(h message.HandlerFunc, msg *message.Message, start time.Time, a try) ([]*message.Message, retry.Kind, error) {
	ctx := msg.Context()
	var (
		slowest     time.Duration // longest call of h so far
		quick       int           // quick retries done
		unavailable int           // Unavailable failures of this message
		acceptedAt  uint64        // calls accepted at its last one
		ownSince    time.Time     // its first failure seen while others got through
	)
	for {
		slowest = max(slowest, a.took)
		err := a.err
		switch a.kind {
		case retry.Unavailable:
			accepted, now := m.circuit.acceptedCount(), time.Now()
			othersThrough := unavailable > 0 && accepted != acceptedAt
			if othersThrough && ownSince.IsZero() {
				// Counted from the first failure seen while others get
				// through, not from an earlier one: a message that failed
				// during an outage and once more as the broker came back
				// (a partition still electing its leader) is not its own.
				ownSince = now
			}
			if othersThrough && now.Sub(ownSince) >= ownFailureSpans*m.config.CircuitMaxBackoff {
				// Others kept getting through while this message kept
				// failing: the failure is the message's own.
				if a.probe {
					m.circuit.endProbe(a.gen)
				}
				err = fmt.Errorf("failed %d times in %s while the destination accepted other messages: %w",
					unavailable+1, now.Sub(ownSince).Round(time.Millisecond), err)
				m.logger.Debug("Publish failed on its own: "+err.Error(), m.fields(msg))
				return nil, retry.Transient, err
			}
			if m.config.OnUnavailable != nil {
				m.config.OnUnavailable(msg, err)
			}
			unavailable++
			acceptedAt = accepted
			if accepted != a.before {
				// Others got through during this call: not evidence of an
				// outage. Retry after this message's own backoff.
				if a.probe {
					m.circuit.endProbe(a.gen)
				}
			} else if delay, failures, opened := m.circuit.open(a.probe); opened {
				fields := watermill.LogFields{"delay": delay.String(), "consecutive_failures": failures}
				// Error once per outage; Info for each failed probe after.
				if failures == 1 {
					m.logger.Error("Destination unavailable, pausing", err, fields)
				} else {
					m.logger.Info("Destination still unavailable, pausing: "+err.Error(), fields)
				}
			}
			// Retry in place after the pause: Unavailable never burns the
			// budget, and giving the row back would only re-claim it. The
			// message also waits its own backoff, in case another message's
			// success closes the circuit meanwhile: then its next failure
			// is its own (see above).
			if !backoff.Sleep(ctx, backoff.Jittered(unavailable, m.config.CircuitMinBackoff, m.config.CircuitMaxBackoff)) {
				return nil, retry.Unavailable, m.released(msg, err, context.Cause(ctx))
			}
		case retry.Permanent:
			m.logger.Debug("Publish failed permanently: "+err.Error(), m.fields(msg))
			return nil, retry.Permanent, err
		default:
			if quick < m.config.QuickRetries && m.quickRetryFits(start, slowest) && backoff.Sleep(ctx, m.config.QuickRetryDelay) {
				quick++
				m.logger.Debug("Publish failed, retrying in process: "+err.Error(), m.fields(msg).
					Add(watermill.LogFields{"quick_retry": quick}))
			} else {
				return nil, retry.Transient, err
			}
		}
		a = m.attempt(h, msg)
		if a.err == nil || a.waitErr != nil {
			return a.result(m, msg, err)
		}
	}
}

// ownFailureSpans, times CircuitMaxBackoff, is how long a message's
// Unavailable failures must go on while others get through before they
// count as its own: long enough for a Kafka partition to elect a new
// leader, short enough that a message that always times out is dead within
// minutes.
const ownFailureSpans = 10

// classify runs the classifier (see Classify).
func (m *Middleware) classify(err error) retry.Kind { return Classify(m.config.Classifier, err) }

// Classify runs classifier on err; an invalid verdict counts as Transient,
// the one that can neither stall the relay nor kill a row at once. The
// send span's error.type says what the middleware decides with it.
func Classify(classifier retry.Classifier, err error) retry.Kind {
	switch k := classifier(err); k {
	case retry.Transient, retry.Unavailable, retry.Permanent:
		return k
	}
	return retry.Transient
}

// quickRetryFits reports whether one more attempt, after QuickRetryDelay and
// as slow as the slowest so far, would end within half the lease.
func (m *Middleware) quickRetryFits(start time.Time, slowest time.Duration) bool {
	end := time.Now().Add(m.config.QuickRetryDelay + slowest)
	return !end.After(start.Add(m.config.Lease / 2))
}

// released returns the error of a message whose context ended while the
// destination was unavailable: the subscriber releases it uncharged.
func (m *Middleware) released(msg *message.Message, lastErr, ctxErr error) error {
	err := lastErr
	if err == nil {
		// Never tried: the context ended while waiting at the circuit.
		err = fmt.Errorf("destination unavailable: gave up waiting: %w", ctxErr)
	}
	m.logger.Debug("Destination unavailable, message released: "+err.Error(), m.fields(msg))
	return err
}

func (m *Middleware) fields(msg *message.Message) watermill.LogFields {
	return watermill.LogFields{
		"uuid":      msg.UUID,
		"outbox_id": msg.Metadata.Get(outbox.OutboxIDMetadataKey),
		"attempt":   msg.Metadata.Get(outbox.AttemptMetadataKey),
	}
}
