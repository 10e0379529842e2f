package forwarder

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// dbRetry is the relay's one policy for database calls that fail: claims,
// ack writes, failure and dead writes, releases and renewals all wait
// backoff.Jittered(n, 50ms, 10s) after their n-th consecutive failure, and
// retry until they succeed or the subscription stops. A database error
// never ends a subscription.
//
// Logging does not flood during an outage: the first failure of a run is
// logged at error level (contention — a deadlock, a serialization failure,
// a lock timeout, relaystore.ErrContention — only at info level: it
// is expected under load and retried), the failures after it at debug
// level with a reminder at error level every logEvery, and the recovery
// at info level with the count. One dbRetry serves one kind of call of one
// subscription and is safe for concurrent use.
type dbRetry struct {
	what   string // "claim", "ack write", ...
	logger watermill.LoggerAdapter
	// contention counts retryable contention errors, for metrics.
	contention *atomic.Int64

	mu       sync.Mutex
	failures int       // consecutive failures
	firstAt  time.Time // of the current run of failures
	loggedAt time.Time // last error-level log of the current run
}

// logEvery spaces the error-level reminders of a long outage.
const logEvery = 30 * time.Second

func newDBRetry(what string, logger watermill.LoggerAdapter, contention *atomic.Int64) *dbRetry {
	return &dbRetry{what: what, logger: logger, contention: contention}
}

// failed records a failure and returns how long to wait before the retry.
func (r *dbRetry) failed(err error) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.failures++
	delay := backoff.Jittered(r.failures, backoff.DBMin, backoff.DBMax)
	fields := watermill.LogFields{"retry_in": delay.String(), "consecutive_failures": r.failures}
	contended := errors.Is(err, relaystore.ErrContention)
	switch {
	case contended:
		r.contention.Add(1)
		r.logger.Info("Outbox "+r.what+" met contention, retrying: "+err.Error(), fields)
	case r.failures == 1:
		r.firstAt, r.loggedAt = now, now
		r.logger.Error("Outbox "+r.what+" failed, retrying", err, fields)
	case now.Sub(r.loggedAt) >= logEvery:
		r.loggedAt = now
		fields["failing_for"] = now.Sub(r.firstAt).Round(time.Second).String()
		r.logger.Error("Outbox "+r.what+" still failing, retrying", err, fields)
	default:
		r.logger.Debug("Outbox "+r.what+" failed again, retrying: "+err.Error(), fields)
	}
	return delay
}

// succeeded ends a run of failures.
func (r *dbRetry) succeeded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failures == 0 {
		return
	}
	if !r.firstAt.IsZero() {
		r.logger.Info("Outbox "+r.what+" works again", watermill.LogFields{
			"failures": r.failures, "failed_for": time.Since(r.firstAt).Round(time.Millisecond).String(),
		})
	}
	r.failures, r.firstAt = 0, time.Time{}
}

// do runs call until it succeeds, or until stop is closed (then it returns
// the last error). Each try gets a bounded context that outlives the
// subscription's, so a shutdown can still write.
func (r *dbRetry) do(stop <-chan struct{}, call func(ctx context.Context) error) error {
	for {
		ctx, cancel := workCtx()
		err := call(ctx)
		cancel()
		if err == nil {
			r.succeeded()
			return nil
		}
		t := time.NewTimer(r.failed(err))
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return err
		}
	}
}

// dbCallTimeout bounds one database call of the relay.
const dbCallTimeout = 30 * time.Second

// workCtx is the context of one database call: independent of the
// Subscribe ctx, so that shutdown can still release claims, but bounded.
func workCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), dbCallTimeout)
}
