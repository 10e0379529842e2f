package forwarder

import (
	"time"

	"github.com/ThreeDotsLabs/watermill"
)

// renewals extends the leases of rows held longer than half the lease
// (ClaimTimeout), so a slow publish does not let another relay take them
// over. One renewal runs at a time; the loop owns the flag.
type renewals struct {
	running bool
}

// renewal is the result of one round of renewals.
type renewal struct {
	ids []int64   // rows whose lease was set
	at  time.Time // when, local clock
}

// renewEvery is how often held rows are checked for renewal.
func renewEvery(lease time.Duration) time.Duration { return max(lease/4, 10*time.Millisecond) }

func (sub *subscription) renew() {
	if sub.renewals.running {
		return
	}
	lease := sub.cfg.ClaimTimeout
	due := sub.win.renewDue(time.Now().Add(-lease / 2))
	if len(due) == 0 {
		return
	}
	sub.renewals.running = true
	sub.spawn(func() {
		at := time.Now()
		var ids []int64
		for token, tokenIDs := range due {
			// One try: a failed renewal is tried again at the next tick,
			// well within the lease.
			ctx, cancel := workCtx()
			n, err := sub.observed(WriteRenew, len(tokenIDs), func() (int, error) {
				return sub.s.store.Renew(ctx, token, tokenIDs, lease)
			})
			cancel()
			if err != nil {
				sub.retries.renew.failed(err)
				continue
			}
			sub.retries.renew.succeeded()
			if n < len(tokenIDs) {
				sub.s.logger.Info("Outbox lease lost: another relay re-claimed rows this one still holds",
					watermill.LogFields{"held": len(tokenIDs), "renewed": n})
			}
			ids = append(ids, tokenIDs...)
		}
		send(sub, sub.renewed, renewal{ids: ids, at: at})
	})
}

func (sub *subscription) onRenewed(r renewal) {
	sub.renewals.running = false
	sub.win.renewed(r.ids, r.at)
}
