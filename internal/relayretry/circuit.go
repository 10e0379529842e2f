package relayretry

import (
	"context"
	"sync"
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
)

// circuit pauses every handler of a Middleware while the destination is
// unavailable. Closed, calls go straight through. Open, every handler waits
// until the pause ends; then one handler probes the destination while the
// others keep waiting: its success (or any answer that is not Unavailable)
// closes the circuit and releases them all, its Unavailable failure opens it
// again for twice as long, up to max. A broker that stays down is asked
// once per pause, not once per waiting message.
//
// It also counts the calls the destination accepted, so a message can tell
// whether others got through while it kept failing (see Middleware.Handle).
type circuit struct {
	min, max time.Duration
	onPause  func(paused bool, since time.Time) // MiddlewareConfig.OnPause; may be nil

	mu       sync.Mutex
	failures int           // openings since the last close; 0: closed
	since    time.Time     // when the current outage began
	until    time.Time     // the pause ends then
	probing  bool          // a handler is probing
	probeGen uint64        // counts probes; identifies the current one
	accepted uint64        // calls that succeeded, ever
	closed   chan struct{} // closed when the circuit closes; new per outage
	changed  chan struct{} // closed on every open and on a probe's end; renewed
}

func (c *circuit) init(min, max time.Duration, onPause func(bool, time.Time)) {
	c.min, c.max, c.onPause = min, max, onPause
	c.changed = make(chan struct{})
}

// signal wakes the waiters to look again; c.mu must be held.
func (c *circuit) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// open opens the circuit after an Unavailable failure. A failure that began
// before the circuit opened (not a probe, while a pause runs) changes
// nothing: concurrent failures of one outage must not inflate the backoff.
// opened reports whether a new pause began; failures counts them.
func (c *circuit) open(probe bool) (delay time.Duration, failures int, opened bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if probe {
		c.probing = false
	} else if c.failures > 0 && (now.Before(c.until) || c.probing) {
		return 0, c.failures, false
	}
	c.failures++
	if c.failures == 1 {
		c.closed = make(chan struct{})
		c.since = now
		if c.onPause != nil {
			c.onPause(true, now)
		}
	}
	delay = backoff.Jittered(c.failures, c.min, c.max)
	c.until = now.Add(delay)
	c.signal()
	return delay, c.failures, true
}

// answered records that the destination answered a call (it succeeded, or
// failed otherwise than Unavailable) and closes the circuit, releasing
// waiting handlers at once. It reports whether the circuit was open.
func (c *circuit) answered(succeeded bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if succeeded {
		c.accepted++
	}
	if c.failures == 0 {
		return false
	}
	c.failures, c.probing = 0, false
	c.until, c.since = time.Time{}, time.Time{}
	close(c.closed)
	if c.onPause != nil {
		c.onPause(false, time.Time{})
	}
	c.signal()
	return true
}

// acceptedCount returns how many calls have succeeded.
func (c *circuit) acceptedCount() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accepted
}

// endProbe ends probe gen without a verdict on the destination (the
// failure was the message's own): the next waiter probes at once.
func (c *circuit) endProbe(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probing && c.probeGen == gen {
		c.probing = false
		c.signal()
	}
}

// pausedSince reports whether the circuit is open, and since when.
func (c *circuit) pausedSince() (bool, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failures > 0, c.since
}

// wait returns once the caller may call the destination: at once when the
// circuit is closed, and with probe set (and the probe's gen) when the
// pause is over and no other handler is probing. It returns ctx's cause
// once ctx is done (checked first: a message whose context ended is not
// handled). A prober must report its result with open(true), answered or
// endProbe.
func (c *circuit) wait(ctx context.Context) (probe bool, gen uint64, err error) {
	for {
		if ctx.Err() != nil {
			return false, 0, context.Cause(ctx)
		}
		c.mu.Lock()
		if c.failures == 0 {
			c.mu.Unlock()
			return false, 0, nil
		}
		d, closed, changed := time.Until(c.until), c.closed, c.changed
		if d <= 0 && !c.probing {
			c.probing = true
			c.probeGen++
			gen := c.probeGen
			c.mu.Unlock()
			return true, gen, nil
		}
		c.mu.Unlock()
		if !waitFor(ctx, d, closed, changed) {
			return false, 0, context.Cause(ctx)
		}
	}
}

// waitFor waits until d has passed (d <= 0: not at all), closed or changed
// is closed, or ctx is done; it reports whether ctx is still live.
func waitFor(ctx context.Context, d time.Duration, closed, changed <-chan struct{}) bool {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-timer:
	case <-closed:
	case <-changed:
	case <-ctx.Done():
		return false
	}
	return true
}
