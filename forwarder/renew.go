package forwarder

import (
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/observe"
)

// renewal is the result of one round of renewals (doRenew): rows held
// longer than half the lease (ClaimTimeout) get it extended, so a slow
// publish does not let another relay take them over.
type renewal struct {
	at     time.Time // when the round began, local clock
	tokens []renewedToken
}

// renewedToken is one claim token's renewal.
type renewedToken struct {
	ids []int64
	n   int   // rows whose lease was set; fewer: leases lost
	err error // the renewal failed; tried again at the next tick
}

// renewEvery is how often held rows are checked for renewal.
func renewEvery(lease time.Duration) time.Duration { return max(lease/4, 10*time.Millisecond) }

// renew renews the leases of due in a worker: one try per token, since a
// failed renewal is tried again at the next tick, well within the lease.
func (sub *subscription) renew(due map[string][]int64) {
	lease := sub.cfg.ClaimTimeout
	sub.spawn(func() {
		r := renewal{at: time.Now(), tokens: make([]renewedToken, 0, len(due))}
		for token, ids := range due {
			ctx, cancel := workCtx()
			n, err := sub.observed(observe.WriteRenew, len(ids), func() (int, error) {
				return sub.s.store.Renew(ctx, token, ids, lease)
			})
			cancel()
			if err != nil {
				sub.retries.renew.failed(err)
			} else {
				sub.retries.renew.succeeded()
			}
			r.tokens = append(r.tokens, renewedToken{ids: ids, n: n, err: err})
		}
		send(sub, sub.renewed, r)
	})
}
