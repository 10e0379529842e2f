package forwarder

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/retry"
)

// fate is what becomes of a row after a delivery.
type fate int

const (
	// published: the destination accepted it; its ack is written.
	published fate = iota
	// retried: one attempt is charged and the row is due after delay.
	retried
	// dead: the row is kept as dead with its last error.
	dead
	// released: given back uncharged (the destination was unavailable).
	released
)

// decision is a row's fate and why.
type decision struct {
	fate  fate
	cause error
	delay time.Duration // retried only
}

// Causes of deliveries the handler never recorded.
var (
	errAckedUnhandled  = errors.New("acked without being published: a router middleware acked the message without the forwarder's handler publishing it (Deduplicator, or one that skips the handler)")
	errNackedUnhandled = errors.New("nacked before the forwarder's handler published it")
)

// decide is the one place a row's fate is decided, from the verdict on one
// delivery of it: published only when the handler recorded that the
// destination accepted the message; released when the destination was
// unavailable; dead when the failure is permanent or the retry budget
// (MaxRetryCount attempts, counted in the row) is spent; retried with
// backoff otherwise. A delivery the handler never recorded is a failed
// attempt, whatever the router's ack said.
func decide(d delivered, cfg config.Config) decision {
	v := d.verdict
	if v.Recorded && v.Published {
		return decision{fate: published}
	}
	kind, cause := v.Kind, v.Err
	if !v.Recorded {
		kind, cause = retry.Transient, errNackedUnhandled
		if d.acked {
			cause = errAckedUnhandled
		}
	}
	if cause == nil {
		cause = errors.New(kind.String())
	}
	switch kind {
	case retry.Unavailable:
		return decision{fate: released, cause: cause}
	case retry.Permanent:
		return decision{fate: dead, cause: cause}
	}
	attempt := d.h.row.Attempts + 1
	if attempt >= cfg.MaxRetryCount {
		return decision{fate: dead, cause: fmt.Errorf("retry budget of %d attempts exhausted: %w", cfg.MaxRetryCount, cause)}
	}
	return decision{fate: retried, cause: cause, delay: backoff.Jittered(attempt, cfg.RetryBackoffMin, cfg.RetryBackoffMax)}
}

// settled is the result of a fate write: the rows leave the window.
type settled struct {
	ids []int64
}

// writeFate carries out a failed row's decision with a fenced write.
func (sub *subscription) writeFate(h *held, dec decision) {
	row := h.row
	fields := watermill.LogFields{"outbox_id": row.ID, "uuid": row.UUID, "topic": row.Topic, "attempt": row.Attempts + 1}
	store := sub.s.store
	var (
		op    observe.WriteOp
		write func(ctx context.Context) (int, error)
	)
	switch dec.fate {
	case released:
		sub.s.logger.Debug("Outbox message released uncharged: "+dec.cause.Error(), fields)
		op, write = observe.WriteRelease, func(ctx context.Context) (int, error) { return store.Release(ctx, h.token, []int64{row.ID}) }
	case dead:
		sub.s.logger.Error("Outbox message is dead: kept with its last error, requeue it once fixed", dec.cause, fields)
		op, write = observe.WriteMarkDead, func(ctx context.Context) (int, error) {
			n, err := store.MarkDead(ctx, h.token, row.ID, dec.cause.Error())
			if obs := sub.s.obs; obs != nil && err == nil && n > 0 {
				obs.ObserveDead(observe.DeadEvent{Handler: sub.s.handler, Topic: row.Topic, Err: dec.cause})
			}
			return n, err
		}
	default:
		fields["retry_in"] = dec.delay.String()
		sub.s.logger.Info("Outbox message failed, will retry: "+dec.cause.Error(), fields)
		op, write = observe.WriteRecordFailure, func(ctx context.Context) (int, error) {
			return store.RecordFailure(ctx, h.token, row.ID, dec.cause.Error(), dec.delay)
		}
	}
	sub.write(op, []int64{row.ID}, write)
}

// release gives rows of one claim token back uncharged, due at once; their
// messages' contexts end.
func (sub *subscription) release(token string, hs []*held) {
	ids := make([]int64, len(hs))
	for i, h := range hs {
		ids[i] = h.row.ID
		if h.cancel != nil {
			h.cancel()
		}
	}
	store := sub.s.store
	sub.write(observe.WriteRelease, ids, func(ctx context.Context) (int, error) { return store.Release(ctx, token, ids) })
}

// write runs a fenced write in a worker, retried by the settle policy; the
// rows leave the window after it (or, should the subscription stop first,
// when their lease expires and another claim redoes it).
func (sub *subscription) write(op observe.WriteOp, ids []int64, write func(ctx context.Context) (int, error)) {
	sub.spawn(func() {
		_ = sub.retries.settle.do(sub.stop, func(ctx context.Context) error {
			_, err := sub.observed(op, len(ids), func() (int, error) { return write(ctx) })
			return err
		})
		send(sub, sub.settled, settled{ids: ids})
	})
}
