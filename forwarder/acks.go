package forwarder

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
)

// acks batches the ack writes of published rows: one MarkPublished per
// claim token, one write at a time, so a busy relay writes a few large
// batches instead of a statement per message. The loop owns it.
type acks struct {
	pending  map[string][]int64 // token → published ids not yet written
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
	a.pending[token] = append(a.pending[token], id)
}

// flush starts writing one token's acks, unless a write is running.
func (sub *subscription) flush() {
	a := &sub.acks
	if a.flushing || len(a.pending) == 0 {
		return
	}
	for token, ids := range a.pending {
		delete(a.pending, token)
		a.flushing = true
		keep := sub.cfg.PublishedRetention > 0
		sub.spawn(func() {
			var n int
			err := sub.retries.ack.do(sub.stop, func(ctx context.Context) error {
				var err error
				n, err = sub.observed(WriteMarkPublished, len(ids), func() (int, error) {
					return sub.s.store.MarkPublished(ctx, token, ids, keep)
				})
				return err
			})
			send(sub, sub.flushed, flushed{ids: ids, recorded: n, err: err})
		})
		return // one token per write; the rest go next
	}
}

func (sub *subscription) onFlushed(r flushed) {
	sub.acks.flushing = false
	if r.err == nil && r.recorded < len(r.ids) {
		sub.s.logger.Info("Outbox lease lost before ack: another relay re-claimed some rows and may publish them again",
			watermill.LogFields{"acked": len(r.ids), "recorded": r.recorded})
	}
	sub.win.remove(r.ids)
	sub.sched.onSettled()
}
