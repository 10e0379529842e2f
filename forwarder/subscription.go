package forwarder

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// closeGrace bounds how long a closing subscription waits for messages in
// the handler to be settled before it releases their claims.
const closeGrace = 5 * time.Second

// subscription is one Subscribe call: a loop that claims rows into its
// window, emits them, and settles each by its verdict. The loop goroutine
// alone touches the state below; database calls run in workers that report
// back on the typed result channels, so acks keep flowing while a claim
// runs and the other way round.
type subscription struct {
	s      *Subscriber
	ctx    context.Context
	topics outbox.TopicFilter
	cfg    config.Config
	out    chan *message.Message
	wake   chan struct{}

	// Results, one channel per kind of work.
	claims    chan claimed
	flushed   chan flushed
	settled   chan settled
	renewed   chan renewal
	delivered chan delivered

	// stop is closed when the loop has ended; workers give up their
	// retries and watchers their waits.
	stop chan struct{}
	work sync.WaitGroup

	win      *window
	sched    *schedule
	acks     acks
	renewals renewals
	settling int // fate writes in progress
	retries  struct{ claim, ack, settle, renew *dbRetry }

	// draining: Close or the end of ctx; no more claims or emissions, the
	// loop only settles what it holds.
	draining bool
	// lapses is how many times this relay was declared dead, as far as
	// the loop has acted on it (see lapsed).
	lapses int64
}

// claimed is the result of one claim.
type claimed struct {
	token string
	rows  []outbox.Row
	more  bool // the store says more rows may be due
	limit int
	err   error
	// lapses is the relay's lapse count when the claim began: a lapse
	// found since, and the rows may be another relay's already.
	lapses int64
}

func newSubscription(s *Subscriber, ctx context.Context, topics outbox.TopicFilter) *subscription {
	cfg := s.config
	sub := &subscription{
		s:         s,
		ctx:       ctx,
		topics:    topics,
		cfg:       cfg,
		out:       make(chan *message.Message),
		wake:      make(chan struct{}, 1),
		claims:    make(chan claimed),
		flushed:   make(chan flushed),
		settled:   make(chan settled),
		renewed:   make(chan renewal),
		delivered: make(chan delivered),
		stop:      make(chan struct{}),
		win:       newWindow(!cfg.DisableOrdering),
		sched:     newSchedule(cfg),
		lapses:    s.live.lapseCount(),
	}
	sub.retries.claim = newDBRetry("claim", s.logger, &s.contention)
	sub.retries.ack = newDBRetry("ack write", s.logger, &s.contention)
	sub.retries.settle = newDBRetry("failure or release write", s.logger, &s.contention)
	sub.retries.renew = newDBRetry("lease renewal", s.logger, &s.contention)
	return sub
}

// run is the loop. Running, it claims when the schedule says so and the
// window has room, emits ready rows, and settles verdicts; draining (after
// Close or the end of ctx) it claims and emits nothing, gives back what it
// has not emitted, and ends once everything it holds is settled or the
// grace is over.
func (sub *subscription) run() {
	defer sub.finish()
	renewTicker := time.NewTicker(renewEvery(sub.cfg.ClaimTimeout))
	defer renewTicker.Stop()
	defer sub.sched.stop()
	ctxDone, closing := sub.ctx.Done(), sub.s.closing
	var grace <-chan time.Time

	for {
		if sub.draining {
			if sub.idle() {
				return
			}
		} else if sub.sched.ready(sub.free(), sub.capacity()) {
			sub.claim()
		}
		sub.flush()

		// No row is handed out while the relay's last heartbeat may have
		// expired (other relays may be taking its rows over), nor after a
		// lapse before the rows not handed out are given back.
		lapses, alive, beaten := sub.s.live.current(time.Now())
		if lapses != sub.lapses {
			sub.lapsed(lapses)
		}
		var out chan *message.Message
		var next *message.Message
		if h := sub.win.next(); h != nil && !sub.draining && alive {
			h.base.lapses = sub.lapses
			out, next = sub.out, h.msg
		}

		select {
		case <-ctxDone:
			ctxDone, closing = nil, nil
			grace = sub.drain()
		case <-closing:
			ctxDone, closing = nil, nil
			grace = sub.drain()
		case <-grace:
			return
		case out <- next:
			sub.emitted(sub.win.popEmitted())
		case <-beaten:
		case <-sub.wake:
			sub.sched.onWake(time.Now())
		case <-sub.sched.C():
			sub.sched.onTimer()
		case <-renewTicker.C:
			sub.renew()
		case r := <-sub.claims:
			sub.onClaimed(r)
		case r := <-sub.flushed:
			sub.onFlushed(r)
		case r := <-sub.settled:
			sub.onSettled(r)
		case r := <-sub.renewed:
			sub.onRenewed(r)
		case d := <-sub.delivered:
			sub.onDelivered(d)
		}
	}
}

// free is the window's room in rows: under MaxInFlight, and under
// MaxInFlightBytes for rows of the size the window has learnt.
func (sub *subscription) free() int {
	return min(sub.cfg.MaxInFlight-sub.win.size(), sub.win.byteRoom(sub.cfg.MaxInFlightBytes))
}

// capacity is how many rows the empty window holds.
func (sub *subscription) capacity() int {
	return min(sub.cfg.MaxInFlight, sub.win.byteCapacity(sub.cfg.MaxInFlightBytes))
}

// claim starts a claim in a worker.
func (sub *subscription) claim() {
	limit := sub.sched.start(sub.free())
	req := outbox.ClaimRequest{Topics: sub.topics, Limit: limit, Lease: sub.cfg.ClaimTimeout, Ordered: !sub.cfg.DisableOrdering,
		StrictOrder: sub.cfg.StrictOrder, Relay: sub.s.live.relay()}
	lapses := sub.s.live.lapseCount()
	sub.spawn(func() {
		ctx, cancel := workCtx()
		defer cancel()
		obs := sub.s.obs
		var start time.Time
		if obs != nil {
			start = time.Now()
		}
		c, err := sub.s.store.Claim(ctx, req)
		sub.s.live.tookOver(c.TakenOver)
		if obs != nil {
			obs.ObserveClaim(ClaimEvent{Handler: sub.s.handler, Rows: c.Rows, TakenOver: takenOver(c), Duration: time.Since(start), Err: err})
		}
		send(sub, sub.claims, claimed{token: c.Token, rows: c.Rows, more: c.More, limit: limit, err: err, lapses: lapses})
	})
}

func (sub *subscription) onClaimed(r claimed) {
	if r.err != nil {
		sub.sched.onClaimFailed(sub.retries.claim.failed(r.err))
		return
	}
	sub.retries.claim.succeeded()
	if r.lapses != sub.s.live.lapseCount() && len(r.rows) > 0 {
		// The relay was declared dead while it claimed them: others may
		// have taken them over already. Back (fenced: only those still
		// its own change), and claimed again.
		sub.sched.onClaimed(len(r.rows), r.limit, true, sub.win.size())
		back := make([]*held, len(r.rows))
		for i, row := range r.rows {
			back[i] = &held{row: row, token: r.token}
		}
		sub.release(back)
		return
	}
	rows, over := sub.win.admit(r.rows, sub.cfg.MaxInFlightBytes)
	readied := sub.win.add(r.token, rows, time.Now())
	sub.sched.onClaimed(len(r.rows), r.limit, r.more || len(over) > 0, sub.win.size())
	if len(over) > 0 {
		// Over MaxInFlightBytes: back at once, no attempt charged; claimed
		// again when the window has room.
		back := make([]*held, len(over))
		for i, row := range over {
			back[i] = &held{row: row, token: r.token}
		}
		sub.release(back)
	}
	if sub.draining {
		// Claimed while closing: give them straight back.
		sub.release(sub.win.unemitted())
		sub.release(readied)
		return
	}
	for _, h := range readied {
		sub.prepare(h)
	}
}

// onDelivered settles one emitted row by its verdict.
func (sub *subscription) onDelivered(d delivered) {
	h := d.h
	h.cancel()
	if !sub.win.holds(h) || h.state != emitted {
		return // released meanwhile (shutdown): nothing to record
	}
	sub.s.warnMisuse(d)
	dec := decide(d, sub.cfg)
	if dec.fate == published {
		sub.acks.add(h.token, h.row.ID)
		if next := sub.win.published(h); next != nil {
			if sub.draining {
				sub.release([]*held{next})
			} else {
				sub.prepare(next)
			}
		}
		return
	}
	// Unavailable attempts were observed as they failed (forwarder.go).
	if obs := sub.s.obs; obs != nil && failureKind(d.verdict) != FailureUnavailable {
		obs.ObserveFailure(FailureEvent{Handler: sub.s.handler, Topic: h.row.Topic, Kind: failureKind(d.verdict), Err: dec.cause})
	}
	behind := sub.win.failed(h)
	sub.settle(h, dec)
	if len(behind) > 0 {
		sub.release(behind) // they must not overtake h
	}
}

// lapsed acts on the relay's finding that it was declared dead (its
// heartbeat had expired, lapses in all): other relays may have taken any
// row of its window over, and may be publishing them. So it gives back
// every row it has not handed to the destination: those not emitted and,
// for the forwarder, those emitted whose handler has not begun (sealed,
// they can no longer be published). The give-back is fenced, so it changes
// only the rows still its own, which are claimable again at once; the
// others are their new holder's. What it had handed out goes on: its
// duplicates are those sends, and acks not written yet, never the rest of
// its window.
func (sub *subscription) lapsed(lapses int64) {
	sub.lapses = lapses
	if sub.draining {
		return // giving back everything anyway
	}
	back := sub.win.unhanded()
	for _, h := range sub.win.held {
		if h.state != emitted || h.rec == nil {
			continue
		}
		if v, ok := h.rec.Seal(); ok && !v.Recorded {
			sub.win.failed(h) // ends its key's chain: nothing is queued behind it now
			back = append(back, h)
		}
	}
	if len(back) > 0 {
		sub.s.logger.Info("Outbox relay gives back the rows it had not handed out yet: it was declared dead, so other relays may hold them now",
			watermill.LogFields{"relay": sub.s.live.relay(), "rows": len(back), "window": sub.win.size()})
	}
	sub.release(back)
}

// drain switches the loop to draining: the channel closes, the rows not
// handed out go back at once, and the grace for the others begins. The
// forwarder's rows handed out whose handler has not begun go back at once
// too: sealed, they can no longer be published, so only the handlers
// publishing are waited for.
func (sub *subscription) drain() <-chan time.Time {
	sub.draining = true
	close(sub.out)
	sub.release(sub.win.unemitted())
	var unhandled []*held
	for _, h := range sub.win.held {
		if h.state != emitted || h.rec == nil {
			continue
		}
		if v, ok := h.rec.Seal(); ok && !v.Recorded {
			unhandled = append(unhandled, h)
		}
	}
	sub.release(unhandled)
	return time.After(min(closeGrace, sub.cfg.ClaimTimeout/2))
}

// idle reports whether a draining loop has nothing left to settle.
func (sub *subscription) idle() bool {
	return sub.win.size() == 0 && !sub.sched.claiming && !sub.acks.flushing &&
		len(sub.acks.pending) == 0 && sub.settling == 0 && !sub.renewals.running
}

// finish ends the subscription after the loop: whatever is still in the
// handler loses its claim (a late verdict is not recorded, so the row is
// published again later: at least once), pending acks are written, and
// the workers are awaited.
func (sub *subscription) finish() {
	if !sub.draining {
		close(sub.out)
	}
	var giveBack []*held
	for _, h := range sub.win.held {
		if h.rec != nil {
			h.rec.Seal() // a handler that has not begun publishes nothing now
		}
		if h.cancel != nil {
			h.cancel()
		}
		if h.state == emitted || h.state == ready || h.state == queued {
			giveBack = append(giveBack, h)
		}
	}
	close(sub.stop)
	ctx, cancel := workCtx()
	defer cancel()
	keep := sub.cfg.PublishedRetention > 0
	for token, ids := range sub.acks.pending {
		_, err := sub.observed(WriteMarkPublished, len(ids), func() (int, error) {
			return sub.s.store.MarkPublished(ctx, token, ids, keep)
		})
		if err != nil {
			sub.s.logger.Error("Outbox ack write on close failed; the rows will be published again", err, nil)
		}
	}
	for token, ids := range byToken(giveBack) {
		_, err := sub.observed(WriteRelease, len(ids), func() (int, error) { return sub.s.store.Release(ctx, token, ids) })
		if err != nil {
			sub.s.logger.Error("Outbox release on close failed; the rows return when their lease expires", err,
				watermill.LogFields{"rows": len(ids)})
		}
	}
	sub.work.Wait()
}

// observed runs one try of a fenced write of rows rows and tells the
// Observer, if any.
func (sub *subscription) observed(op WriteOp, rows int, write func() (int, error)) (int, error) {
	obs := sub.s.obs
	if obs == nil {
		return write()
	}
	start := time.Now()
	n, err := write()
	obs.ObserveWrite(WriteEvent{Handler: sub.s.handler, Op: op, Rows: rows, Changed: n, Duration: time.Since(start), Err: err})
	return n, err
}

// spawn runs fn in a worker the subscription waits for.
func (sub *subscription) spawn(fn func()) {
	sub.work.Add(1)
	go func() {
		defer sub.work.Done()
		fn()
	}()
}

// send delivers a worker's result to the loop, unless the loop has ended.
func send[T any](sub *subscription, ch chan<- T, v T) {
	select {
	case ch <- v:
	case <-sub.stop:
	}
}
