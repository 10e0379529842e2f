package forwarder

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// closeGrace bounds how long a closing subscription waits for messages in
// the handler to be settled before it releases their claims.
const closeGrace = 5 * time.Second

// subscription is one Subscribe call: a loop that carries out what its
// machine decides. The loop goroutine alone touches the machine; database
// calls run in workers that report back on the typed result channels, so
// acks keep flowing while a claim runs and the other way round. Every
// result, tick and hand-out is an event of the machine, and the loop does
// what the effects it returns say (apply).
type subscription struct {
	s      *Subscriber
	ctx    context.Context
	topics relaystore.TopicFilter
	cfg    config.Config
	out    chan *message.Message
	wake   chan struct{}

	// Results, one channel per kind of work; the watchers' verdicts in a
	// queue the loop empties at once.
	claims   chan claimed
	flushed  chan flushed
	settled  chan settled
	renewed  chan renewal
	verdicts *verdicts

	// stop is closed when the loop has ended; workers give up their
	// retries and watchers their waits.
	stop chan struct{}
	work sync.WaitGroup

	m       *machine
	timer   *time.Timer      // the claim timer (doTimer)
	grace   <-chan time.Time // set by doClose
	closed  bool             // out is closed
	retries struct{ claim, ack, settle, renew *dbRetry }
}

// claimed is the result of one claim.
type claimed struct {
	token   string
	rows    []relaystore.Row
	more    bool // the store says more rows may be due
	limit   int
	err     error
	retryIn time.Duration // after a failed claim: the database backoff
	// lapses is the relay's lapse count when the claim began; lapsed: a
	// lapse was found since, and the rows may be another relay's already.
	lapses int64
	lapsed bool
}

func newSubscription(s *Subscriber, ctx context.Context, topics relaystore.TopicFilter) *subscription {
	cfg := s.config
	sub := &subscription{
		s:        s,
		ctx:      ctx,
		topics:   topics,
		cfg:      cfg,
		out:      make(chan *message.Message),
		wake:     make(chan struct{}, 1),
		claims:   make(chan claimed),
		flushed:  make(chan flushed),
		settled:  make(chan settled),
		renewed:  make(chan renewal),
		verdicts: newVerdicts(),
		stop:     make(chan struct{}),
		m:        newMachine(cfg, s.live.lapseCount()),
	}
	sub.retries.claim = newDBRetry("claim", s.logger, &s.contention)
	sub.retries.ack = newDBRetry("ack write", s.logger, &s.contention)
	sub.retries.settle = newDBRetry("failure or release write", s.logger, &s.contention)
	sub.retries.renew = newDBRetry("lease renewal", s.logger, &s.contention)
	return sub
}

// run is the loop: it feeds the machine its events and applies the
// effects, until the machine, draining, is done or the grace is over.
func (sub *subscription) run() {
	defer sub.finish()
	renewTicker := time.NewTicker(renewEvery(sub.cfg.ClaimTimeout))
	defer renewTicker.Stop()
	sub.timer = time.NewTimer(time.Hour)
	sub.timer.Stop()
	defer sub.timer.Stop()
	ctxDone, closing := sub.ctx.Done(), sub.s.closing
	m := sub.m

	sub.apply(m.start())
	for !m.done() {
		// No row is handed out while the relay's last heartbeat may have
		// expired, nor after a lapse before the rows not handed out are
		// given back.
		lapses, alive, beaten := sub.s.live.current(time.Now())
		sub.apply(m.heartbeat(lapses, alive))
		var out chan *message.Message
		var next *message.Message
		if h := m.next(); h != nil {
			h.base.lapses = m.lapses
			out, next = sub.out, h.msg
		}

		var effs []effect
		select {
		case <-ctxDone:
			ctxDone, closing = nil, nil
			effs = m.drain()
		case <-closing:
			ctxDone, closing = nil, nil
			effs = m.drain()
		case <-sub.grace:
			return
		case out <- next:
			effs = m.handedOut()
		case <-beaten:
		case <-sub.wake:
			effs = m.wake(time.Now())
		case <-sub.timer.C:
			effs = m.timer()
		case <-renewTicker.C:
			effs = m.renewDue(time.Now())
		case r := <-sub.claims:
			r.lapsed = r.lapses != sub.s.live.lapseCount()
			if r.err != nil {
				r.retryIn = sub.retries.claim.failed(r.err)
			} else {
				sub.retries.claim.succeeded()
			}
			effs = m.claimed(r, time.Now())
		case r := <-sub.flushed:
			effs = m.flushed(r)
		case r := <-sub.settled:
			effs = m.settled(r)
		case r := <-sub.renewed:
			effs = m.renewed(r)
		case <-sub.verdicts.ready:
			for _, d := range sub.verdicts.take() {
				d.h.cancel()
				if !m.done() { // else it came too late, as after the loop's end
					sub.apply(m.delivered(d))
				}
			}
		}
		sub.apply(effs)
	}
}

// apply carries out the machine's effects, in order.
func (sub *subscription) apply(effs []effect) {
	for len(effs) > 0 {
		var unhandled []*held
		sealed := false
		for i := range effs {
			e := &effs[i]
			switch e.kind {
			case doClaim:
				sub.claim(e.n)
			case doTimer:
				sub.timer.Reset(e.d)
			case doPrepare:
				sub.prepare(e.h)
			case doWatch:
				sub.emitted(e.h)
			case doAck:
				sub.writeAcks(e.token, e.ids)
			case doFate:
				sub.writeFate(e.h, e.dec)
			case doRelease:
				sub.release(e.token, e.hs)
			case doRenew:
				sub.renew(e.due)
			case doSeal:
				unhandled, sealed = seal(e.hs), true
			case doClose:
				sub.closed = true
				close(sub.out)
				sub.grace = time.After(e.d)
			case doWarn:
				sub.s.warnMisuse(e.misuse, e.h, e.err)
			case doObserveFailure:
				if obs := sub.s.obs; obs != nil {
					obs.ObserveFailure(observe.FailureEvent{Handler: sub.s.handler, Topic: e.h.row.Topic, Kind: e.failure, Err: e.err})
				}
			case doLeaseLost:
				sub.leaseLost(e.op, e.n, e.got)
			case doLapseLog:
				sub.s.logger.Info("Outbox relay gives back the rows it had not handed out yet: it was declared dead, so other relays may hold them now",
					watermill.LogFields{"relay": sub.s.live.relay(), "rows": e.n, "window": e.got})
			}
		}
		effs = nil
		if sealed {
			effs = sub.m.unhandled(unhandled) // answered even when none: a lapse waits for it
		}
	}
}

// leaseLost logs a fenced write that changed fewer rows than it named.
func (sub *subscription) leaseLost(op observe.WriteOp, n, got int) {
	if op == observe.WriteRenew {
		sub.s.logger.Info("Outbox lease lost: another relay re-claimed rows this one still holds",
			watermill.LogFields{"held": n, "renewed": got})
		return
	}
	sub.s.logger.Info("Outbox lease lost before ack: another relay re-claimed some rows and may publish them again",
		watermill.LogFields{"acked": n, "recorded": got})
}

// claim starts a claim of up to limit rows in a worker.
func (sub *subscription) claim(limit int) {
	req := relaystore.ClaimRequest{Topics: sub.topics, Limit: limit, Lease: sub.cfg.ClaimTimeout, Ordered: !sub.cfg.DisableOrdering,
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
			obs.ObserveClaim(observe.ClaimEvent{Handler: sub.s.handler, Rows: c.Rows, TakenOver: takenOver(c), Duration: time.Since(start), Err: err})
		}
		send(sub, sub.claims, claimed{token: c.Token, rows: c.Rows, more: c.More, limit: limit, err: err, lapses: lapses})
	})
}

// finish ends the subscription after the loop: whatever is still in the
// handler loses its claim (a late verdict is not recorded, so the row is
// published again later: at least once), pending acks are written, and
// the workers are awaited.
func (sub *subscription) finish() {
	if !sub.closed {
		close(sub.out)
	}
	for _, h := range sub.m.win.held {
		if h.rec != nil {
			h.rec.Seal() // a handler that has not begun publishes nothing now
		}
		if h.cancel != nil {
			h.cancel()
		}
	}
	acks, giveBack := sub.m.leftover()
	close(sub.stop)
	ctx, cancel := workCtx()
	defer cancel()
	keep := sub.cfg.PublishedRetention > 0
	for token, ids := range acks {
		_, err := sub.observed(observe.WriteMarkPublished, len(ids), func() (int, error) {
			return sub.s.store.MarkPublished(ctx, token, ids, keep)
		})
		if err != nil {
			sub.s.logger.Error("Outbox ack write on close failed; the rows will be published again", err, nil)
		}
	}
	for _, g := range groupByToken(giveBack) {
		ids := make([]int64, len(g))
		for i, h := range g {
			ids[i] = h.row.ID
		}
		_, err := sub.observed(observe.WriteRelease, len(ids), func() (int, error) { return sub.s.store.Release(ctx, g[0].token, ids) })
		if err != nil {
			sub.s.logger.Error("Outbox release on close failed; the rows return when their lease expires", err,
				watermill.LogFields{"rows": len(ids)})
		}
	}
	sub.work.Wait()
}

// observed runs one try of a fenced write of rows rows and tells the
// Observer, if any.
func (sub *subscription) observed(op observe.WriteOp, rows int, write func() (int, error)) (int, error) {
	obs := sub.s.obs
	if obs == nil {
		return write()
	}
	start := time.Now()
	n, err := write()
	obs.ObserveWrite(observe.WriteEvent{Handler: sub.s.handler, Op: op, Rows: rows, Changed: n, Duration: time.Since(start), Err: err})
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
