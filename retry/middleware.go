package retry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Middleware defaults not taken from package config.
const (
	// DefaultQuickRetryDelay is the pause before an in-process retry.
	DefaultQuickRetryDelay = 100 * time.Millisecond

	// DefaultCircuitMinBackoff is the first pause after the destination
	// was found unavailable.
	DefaultCircuitMinBackoff = 100 * time.Millisecond

	// DefaultCircuitMaxBackoff caps the pause while the destination stays
	// unavailable.
	DefaultCircuitMaxBackoff = 30 * time.Second
)

// MiddlewareConfig configures NewMiddleware. The zero value is usable.
type MiddlewareConfig struct {
	// MaxRetryCount is the retry budget, in attempts: a Transient failure
	// of attempt MaxRetryCount or later (AttemptMetadataKey) is reported
	// Permanent, its error wrapped "retry budget of N attempts exhausted".
	// Use the outbox's config.Config.MaxRetryCount. Default
	// config.DefaultMaxRetryCount (5); zero means the default. Minimum 1.
	MaxRetryCount int

	// Classifier classifies handler errors. Default DefaultClassifier; nil
	// means the default.
	Classifier Classifier

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
	// message failed Unavailable; each failure of a retry after the pause
	// doubles it, up to CircuitMaxBackoff (with jitter, see Backoff).
	// Default DefaultCircuitMinBackoff (100ms); zero means the default.
	// Must not be negative, nor exceed CircuitMaxBackoff.
	CircuitMinBackoff time.Duration

	// CircuitMaxBackoff caps the pause while the destination stays
	// unavailable. Default DefaultCircuitMaxBackoff (30s); zero means the
	// default. Must not be negative.
	CircuitMaxBackoff time.Duration
}

func (c *MiddlewareConfig) setDefaults() {
	if c.MaxRetryCount == 0 {
		c.MaxRetryCount = config.DefaultMaxRetryCount
	}
	if c.Classifier == nil {
		c.Classifier = DefaultClassifier
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
	if c.MaxRetryCount < 1 {
		errs = append(errs, fmt.Errorf("MaxRetryCount: must be at least 1, got %d", c.MaxRetryCount))
	}
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
// worth retrying in process, and reports the verdict (Report) for the
// subscriber to act on when the router nacks. See the package documentation
// for where it goes among a router's middlewares.
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
	return &Middleware{
		config:  config,
		logger:  logger,
		circuit: circuit{min: config.CircuitMinBackoff, max: config.CircuitMaxBackoff},
	}, nil
}

// CircuitOpen reports whether handlers are currently pausing because the
// destination was found unavailable.
func (m *Middleware) CircuitOpen() bool { return m.circuit.isOpen() }

// Middleware is a message.HandlerMiddleware. For each message it:
//
//   - waits while the circuit is open, or until msg.Context() is done;
//   - calls h; on success closes the circuit and returns;
//   - on an Unavailable error opens the circuit and retries the same
//     message after the pause, until it succeeds, fails otherwise, or
//     msg.Context() is done; then it reports Unavailable (no attempt
//     charged) and returns the last error;
//   - on a Permanent error reports Permanent and returns the error;
//   - on a Transient error retries up to QuickRetries times in process
//     (within half the Lease), then reports Transient, or Permanent once
//     the attempt (AttemptMetadataKey) reaches MaxRetryCount, and returns
//     the error.
func (m *Middleware) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		return m.handle(h, msg)
	}
}

func (m *Middleware) handle(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	ctx := msg.Context()
	start := time.Now()
	var (
		lastErr     error         // of the last call of h
		slowest     time.Duration // longest call of h so far
		quick       int           // quick retries done
		unavailable int           // Unavailable failures of this message
	)
	for {
		if err := m.circuit.wait(ctx); err != nil {
			return nil, m.released(msg, lastErr, err)
		}
		callStart := time.Now()
		produced, err := h(msg)
		slowest = max(slowest, time.Since(callStart))
		if err == nil {
			if m.circuit.close() {
				m.logger.Info("Destination available again, resuming", nil)
			}
			return produced, nil
		}
		lastErr = err

		switch m.classify(err) {
		case Unavailable:
			if delay, failures, opened := m.circuit.open(); opened {
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
			// success closes the circuit meanwhile: its failure may be its
			// own (one partition without a leader), and must not spin.
			unavailable++
			if !sleep(ctx, Backoff(unavailable, m.config.CircuitMinBackoff, m.config.CircuitMaxBackoff)) {
				return nil, m.released(msg, err, context.Cause(ctx))
			}
		case Permanent:
			return nil, m.dead(msg, err)
		default:
			if quick < m.config.QuickRetries && m.quickRetryFits(start, slowest) && sleep(ctx, m.config.QuickRetryDelay) {
				quick++
				m.logger.Debug("Publish failed, retrying in process: "+err.Error(), m.fields(msg, attempt(msg)).
					Add(watermill.LogFields{"quick_retry": quick}))
				continue
			}
			return nil, m.failed(msg, err)
		}
	}
}

// classify runs the classifier; an invalid verdict counts as Transient, the
// one that can neither stall the relay nor kill a row at once.
func (m *Middleware) classify(err error) Kind {
	if k := m.config.Classifier(err); k.valid() {
		return k
	}
	return Transient
}

// quickRetryFits reports whether one more attempt, after QuickRetryDelay and
// as slow as the slowest so far, would end within half the lease.
func (m *Middleware) quickRetryFits(start time.Time, slowest time.Duration) bool {
	end := time.Now().Add(m.config.QuickRetryDelay + slowest)
	return !end.After(start.Add(m.config.Lease / 2))
}

// released reports Unavailable for a message whose context ended while the
// destination was unavailable: the subscriber releases it uncharged.
func (m *Middleware) released(msg *message.Message, lastErr, ctxErr error) error {
	err := lastErr
	if err == nil {
		// Never tried: the context ended while waiting at the circuit.
		err = fmt.Errorf("destination unavailable: gave up waiting: %w", ctxErr)
	}
	Report(msg, Unavailable, err)
	m.logger.Debug("Destination unavailable, message released: "+err.Error(), m.fields(msg, attempt(msg)))
	return err
}

// dead reports a Permanent failure.
func (m *Middleware) dead(msg *message.Message, err error) error {
	Report(msg, Permanent, err)
	m.logger.Error("Dead-lettering: the destination can never accept this message", err, m.fields(msg, attempt(msg)))
	return err
}

// failed reports a Transient failure, or a Permanent one once the budget is
// spent.
func (m *Middleware) failed(msg *message.Message, err error) error {
	n := attempt(msg)
	if n >= m.config.MaxRetryCount {
		err = fmt.Errorf("retry budget of %d attempts exhausted: %w", m.config.MaxRetryCount, err)
		Report(msg, Permanent, err)
		m.logger.Error("Dead-lettering: retry budget exhausted", err, m.fields(msg, n))
		return err
	}
	Report(msg, Transient, err)
	// Debug: the subscriber logs the retry, with its backoff, at Info.
	m.logger.Debug("Publish failed, the outbox will retry it: "+err.Error(), m.fields(msg, n).
		Add(watermill.LogFields{"max_attempts": m.config.MaxRetryCount}))
	return err
}

func (m *Middleware) fields(msg *message.Message, attempt int) watermill.LogFields {
	return watermill.LogFields{
		"uuid":      msg.UUID,
		"outbox_id": msg.Metadata.Get(outbox.OutboxIDMetadataKey),
		"attempt":   attempt,
	}
}

// attempt returns the message's attempt number; a missing or malformed one
// counts as the first, so the budget is never spent by mistake.
func attempt(msg *message.Message) int {
	n, err := strconv.Atoi(msg.Metadata.Get(outbox.AttemptMetadataKey))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// sleep waits d, or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// circuit pauses every handler of a Middleware while the destination is
// unavailable. It is open until `until`; after that it is half-open: calls
// go through, a success closes it, an Unavailable failure opens it again
// for twice as long.
type circuit struct {
	min, max time.Duration

	mu       sync.Mutex
	failures int           // failed openings since the last success; 0: closed
	until    time.Time     // handlers wait until then
	closed   chan struct{} // closed when the circuit closes; new per outage
}

// open opens the circuit after an Unavailable failure. If it is already
// open, the failure came from a call started before it opened and changes
// nothing: concurrent failures of one outage must not inflate the backoff.
// opened reports whether a new pause began; failures counts them.
func (c *circuit) open() (delay time.Duration, failures int, opened bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if now.Before(c.until) {
		return 0, c.failures, false
	}
	c.failures++
	if c.failures == 1 {
		c.closed = make(chan struct{})
	}
	delay = Backoff(c.failures, c.min, c.max)
	c.until = now.Add(delay)
	return delay, c.failures, true
}

// close closes the circuit after a success, releasing waiting handlers at
// once. It reports whether the circuit was open or half-open.
func (c *circuit) close() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failures == 0 {
		return false
	}
	c.failures = 0
	c.until = time.Time{}
	close(c.closed)
	return true
}

func (c *circuit) isOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Before(c.until)
}

// wait returns once the circuit is not open, or with ctx's cause once ctx is
// done (checked first: a message whose context ended is not handled).
func (c *circuit) wait(ctx context.Context) error {
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		c.mu.Lock()
		d, closed := time.Until(c.until), c.closed
		c.mu.Unlock()
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
			// Loop: another failure may have extended the pause.
		case <-closed:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		}
	}
}
