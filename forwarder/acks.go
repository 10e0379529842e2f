package forwarder

import (
	"context"

	"github.com/e0a82c8c/watermill-outbox/internal/observe"
)

// acks batches the ack writes of published rows: one MarkPublished per
// claim token, one write at a time, so a busy relay writes a few large
// batches instead of a statement per message. It is the machine's.
type acks struct {
	pending  map[string][]int64 // token → published ids not yet written
	order    []string           // the tokens of pending, oldest first
	flushing bool
}

// flushed is the result of one ack write.
type flushed struct {
	ids      []int64
	recorded int   // rows the write changed; fewer: leases lost
	err      error // only when the subscription stopped before it succeeded
}

func (a *acks) add(token string, id int64) {
	if a.pending == nil {
		a.pending = make(map[string][]int64)
	}
	if _, ok := a.pending[token]; !ok {
		a.order = append(a.order, token)
	}
	a.pending[token] = append(a.pending[token], id)
}

// next takes the oldest token's acks to write, unless a write is running
// or none is pending (then ids is nil).
func (a *acks) next() (token string, ids []int64) {
	if a.flushing || len(a.order) == 0 {
		return "", nil
	}
	token = a.order[0]
	a.order[0] = ""
	a.order = a.order[1:]
	ids = a.pending[token]
	delete(a.pending, token)
	a.flushing = true
	return token, ids
}

// writeAcks writes one token's acks in a worker, retried by the ack
// policy.
func (sub *subscription) writeAcks(token string, ids []int64) {
	keep := sub.cfg.PublishedRetention > 0
	sub.spawn(func() {
		var n int
		err := sub.retries.ack.do(sub.stop, func(ctx context.Context) error {
			var err error
			n, err = sub.observed(observe.WriteMarkPublished, len(ids), func() (int, error) {
				return sub.s.store.MarkPublished(ctx, token, ids, keep)
			})
			return err
		})
		send(sub, sub.flushed, flushed{ids: ids, recorded: n, err: err})
	})
}
