package forwarder

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// AllTopics subscribes to the rows of every destination topic; the forwarder
// uses it. The row's topic is in TopicMetadataKey.
const AllTopics = "*"

// TopicMetadataKey holds the destination topic of an emitted message. The
// forwarder removes it, with the other relay keys, before publishing.
const TopicMetadataKey = "outbox_topic"

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("outbox subscriber: closed")

// Subscriber is a message.Subscriber over the outbox table. It claims rows
// through a watermilloutbox.Store and emits them as messages with their
// original UUID, payload and metadata, plus the relay keys OutboxIDMetadataKey,
// AttemptMetadataKey and TopicMetadataKey.
//
//   - Ack marks the row published (or deletes it, per retention), fenced by
//     the claim token. Acks are written in batches.
//   - Nack charges an attempt and makes the row due again after exponential
//     backoff with jitter, releasing the claim at once; at MaxRetryCount the
//     row is dead. A verdict recorded by retry.Middleware (retry.Report)
//     refines this: Unavailable releases without a charge, Permanent is dead
//     at once.
//   - Rows leased longer than half the claim timeout get their lease renewed
//     while they are held; a crashed relay's rows are claimed again when its
//     lease expires.
//   - With ordering on, messages of one partition key are emitted one at a
//     time, in id order: the next only after the previous was acked. A nack
//     releases the rest of that key's claimed rows.
//   - Close, or the end of Subscribe's ctx, stops claiming, closes the
//     channel, waits briefly for messages being handled to be acked, then
//     releases every claim still held. It never marks a row published that
//     was not acked.
//
// A database error never ends a subscription: it is logged and retried with
// backoff.
type Subscriber struct {
	store  outbox.Store
	config config.Config
	logger watermill.LoggerAdapter

	closing   chan struct{}
	closeOnce sync.Once
	subsWg    sync.WaitGroup

	mu        sync.Mutex
	subs      map[*subscription]struct{}
	purging   bool
	listening bool

	soon atomic.Bool // a Notify(false) wake-up is scheduled
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a Subscriber claiming rows from store, tuned by cfg
// (zero fields take config's defaults). A nil logger logs nothing.
func NewSubscriber(store outbox.Store, cfg config.Config, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if store == nil {
		return nil, errors.New("outbox subscriber: store is nil")
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Subscriber{
		store:   store,
		config:  cfg,
		logger:  logger,
		closing: make(chan struct{}),
		subs:    make(map[*subscription]struct{}),
	}, nil
}

// Subscribe claims and emits the rows of one destination topic, or of all
// with AllTopics, until ctx ends or Close. Several subscriptions, in this or
// other processes, share the rows: each row goes to one of them at a time.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, fmt.Errorf("outbox subscriber: empty topic (use %q for all)", AllTopics)
	}
	if topic == AllTopics {
		topic = ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closing:
		return nil, ErrClosed
	default:
	}
	if !s.purging && s.config.PublishedRetention > 0 {
		s.purging = true
		s.subsWg.Add(1)
		go s.purgeLoop()
	}
	s.startListener()
	sub := newSubscription(s, ctx, topic)
	s.subs[sub] = struct{}{}
	s.subsWg.Add(1)
	go func() {
		defer s.subsWg.Done()
		sub.run()
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}()
	return sub.out, nil
}

// Wake makes every subscription claim now instead of at its next poll, and
// look once more NotifyInterval after that claim; a commit notification
// (LISTEN/NOTIFY, or a publisher in the same process) calls it. It never
// blocks.
//
// On PostgreSQL, unless DisableNotify is set, the Subscriber LISTENs on the
// table's channel (watermilloutbox.NotifyChannel) on one connection of the
// store's *sql.DB (pgx driver) and calls Wake on every notification; it
// reconnects with backoff when that connection is lost, and polling goes on
// regardless.
func (s *Subscriber) Wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// Close ends every subscription as described on Subscriber and waits for
// them. It is idempotent and safe before Subscribe.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	s.closeOnce.Do(func() { close(s.closing) })
	s.mu.Unlock()
	s.subsWg.Wait()
	return nil
}

// closeGrace bounds how long a closing subscription waits for messages in
// the handler to be acked before it releases their claims.
const closeGrace = 5 * time.Second

// dbRetryMin and dbRetryMax bound the backoff after a database error.
const (
	dbRetryMin = 50 * time.Millisecond
	dbRetryMax = 10 * time.Second
)

// held is a claimed row this subscription is responsible for.
type held struct {
	row       outbox.Row
	token     string
	renewedAt time.Time // when the lease was last set, local clock
	chain     string    // per-key order chain, "" when unordered
	msg       *message.Message
	cancel    context.CancelFunc
	acked     bool // waiting for the batched MarkPublished
}

type event struct {
	kind   eventKind
	h      *held
	token  string
	rows   []outbox.Row
	ids    []int64
	err    error
	stamps time.Time
	limit  int // claims: how many rows were asked for
}

type eventKind int

const (
	evAck eventKind = iota
	evNack
	evClaimed
	evFlushed
	evSettled
	evRenewed
)

type subscription struct {
	s      *Subscriber
	ctx    context.Context
	topic  string
	out    chan *message.Message
	wake   chan struct{}
	events chan event
	// stop is closed when the subscription stops; workers give up retries.
	stop chan struct{}

	held   map[int64]*held
	ready  []*held            // claimed, in order, waiting to be emitted
	chains map[string][]*held // per key: rows behind the one in flight
	acks   map[string][]int64 // token → acked ids not yet flushed
	busy   struct{ claim, flush, renew bool }
	// backlog: the last claim came back full, so more rows are waiting.
	backlog bool
	work    sync.WaitGroup
	settle  int // nack/release writes in progress
}

func newSubscription(s *Subscriber, ctx context.Context, topic string) *subscription {
	return &subscription{
		s:      s,
		ctx:    ctx,
		topic:  topic,
		out:    make(chan *message.Message),
		wake:   make(chan struct{}, 1),
		events: make(chan event, 64),
		stop:   make(chan struct{}),
		held:   make(map[int64]*held),
		chains: make(map[string][]*held),
		acks:   make(map[string][]int64),
	}
}

func (sub *subscription) cfg() config.Config { return sub.s.config }

func (sub *subscription) ordered() bool { return !sub.s.config.DisableOrdering }

// run is the subscription's event loop. It alone touches the state above;
// database calls run in worker goroutines that report back through events,
// so acks keep flowing while a claim is in progress and vice versa.
func (sub *subscription) run() {
	cfg := sub.cfg()
	claimTimer := time.NewTimer(0)
	defer claimTimer.Stop()
	renewTicker := time.NewTicker(max(cfg.ClaimTimeout/4, 10*time.Millisecond))
	defer renewTicker.Stop()
	claimDue := true
	// woken: a wake-up asked for this claim, so look again one
	// NotifyInterval after the wake-up arrived, for the commits whose
	// publishers skipped their NOTIFY (see watermilloutbox.Publisher's
	// coalescing).
	woken, recheck := false, false
	var wokeAt time.Time
	errDelay := time.Duration(0)

	for {
		if claimDue && !sub.busy.claim && sub.free() >= sub.claimThreshold() {
			claimDue = false
			recheck, woken = recheck || woken, false
			sub.startClaim(sub.claimLimit())
		}
		if !sub.busy.flush && len(sub.acks) > 0 {
			sub.startFlush()
		}

		var out chan *message.Message
		var next *message.Message
		if len(sub.ready) > 0 {
			out, next = sub.out, sub.ready[0].msg
		}

		select {
		case <-sub.ctx.Done():
			sub.shutdown()
			return
		case <-sub.s.closing:
			sub.shutdown()
			return
		case out <- next:
			sub.ready = sub.ready[1:]
		case <-sub.wake:
			claimDue, woken, wokeAt = true, true, time.Now()
		case <-claimTimer.C:
			claimDue = true
		case <-renewTicker.C:
			sub.startRenew()
		case ev := <-sub.events:
			switch ev.kind {
			case evClaimed:
				sub.busy.claim = false
				if ev.err != nil {
					errDelay = nextDelay(errDelay)
					sub.s.logger.Error("Outbox claim failed, retrying", ev.err, watermill.LogFields{"retry_in": errDelay.String()})
					claimTimer.Reset(errDelay)
					break
				}
				errDelay = 0
				sub.accept(ev.token, ev.rows)
				sub.backlog = len(ev.rows) > 0 && len(ev.rows) >= ev.limit
				switch {
				case len(ev.rows) > 0 && len(ev.rows) >= ev.limit:
					claimDue = true // more may be waiting
				case recheck:
					recheck = false
					claimTimer.Reset(max(0, min(cfg.NotifyInterval, cfg.PollingInterval)-time.Since(wokeAt)))
				default:
					claimTimer.Reset(cfg.PollingInterval)
				}
			default:
				sub.handle(ev)
			}
		}
	}
}

func (sub *subscription) free() int { return sub.cfg().MaxInFlight - len(sub.held) }

// claimLimit is BatchSize rows, or, while a backlog drains (the last claim
// came back full), as many as the in-flight window has room for: a claim
// costs about the same for 100 rows as for 1,000 (its round trips and its
// commit dominate), so larger claims drain a backlog faster, and an idle
// relay still claims small batches.
func (sub *subscription) claimLimit() int {
	cfg := sub.cfg()
	if sub.backlog {
		return min(sub.free(), config.MaxBatchSize)
	}
	return min(cfg.BatchSize, sub.free())
}

// claimThreshold avoids claiming a row at a time when the window is nearly
// full: wait until half a batch fits.
func (sub *subscription) claimThreshold() int {
	return max(1, min(sub.cfg().BatchSize, sub.cfg().MaxInFlight)/2)
}

func nextDelay(d time.Duration) time.Duration {
	if d == 0 {
		return dbRetryMin
	}
	return min(2*d, dbRetryMax)
}

func (sub *subscription) startClaim(limit int) {
	sub.busy.claim = true
	req := outbox.ClaimRequest{Topic: sub.topic, Limit: limit, Lease: sub.cfg().ClaimTimeout, Ordered: sub.ordered()}
	sub.spawn(func() event {
		ctx, cancel := sub.workCtx()
		defer cancel()
		token, rows, err := sub.s.store.Claim(ctx, req)
		return event{kind: evClaimed, token: token, rows: rows, err: err, limit: limit}
	})
}

// workCtx is the context of database calls: independent of the Subscribe
// ctx, so that shutdown can still release claims, but bounded.
func (sub *subscription) workCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(sub.ctx), 30*time.Second)
}

// spawn runs fn in a worker and delivers its event unless the loop stopped.
func (sub *subscription) spawn(fn func() event) {
	sub.work.Add(1)
	go func() {
		defer sub.work.Done()
		ev := fn()
		select {
		case sub.events <- ev:
		case <-sub.stop:
		}
	}()
}

// accept takes claimed rows into the window: keyless rows are ready at once,
// keyed rows queue behind their key's first row when ordering is on.
func (sub *subscription) accept(token string, rows []outbox.Row) {
	now := time.Now()
	for _, r := range rows {
		h := &held{row: r, token: token, renewedAt: now}
		if sub.ordered() && r.PartitionKey != "" {
			h.chain = r.Topic + "\x00" + r.PartitionKey
		}
		sub.held[r.ID] = h
		if h.chain != "" {
			if q, busy := sub.chains[h.chain]; busy {
				sub.chains[h.chain] = append(q, h)
				continue
			}
			sub.chains[h.chain] = nil // head in flight, nobody behind yet
		}
		sub.makeReady(h)
	}
}

// makeReady builds the message for h and queues it for emission.
func (sub *subscription) makeReady(h *held) {
	md := make(message.Metadata, len(h.row.Metadata)+3)
	for k, v := range h.row.Metadata {
		md[k] = v
	}
	md[outbox.OutboxIDMetadataKey] = strconv.FormatInt(h.row.ID, 10)
	md[outbox.AttemptMetadataKey] = strconv.Itoa(h.row.Attempts + 1)
	md[TopicMetadataKey] = h.row.Topic

	msg := message.NewMessage(h.row.UUID, h.row.Payload)
	msg.Metadata = md
	ctx, cancel := context.WithCancel(sub.ctx)
	ctx, _ = retry.ContextWithOutcome(ctx)
	msg.SetContext(ctx)
	h.msg, h.cancel = msg, cancel
	sub.ready = append(sub.ready, h)

	sub.work.Add(1)
	go func() {
		defer sub.work.Done()
		var ev event
		select {
		case <-msg.Acked():
			ev = event{kind: evAck, h: h}
		case <-msg.Nacked():
			ev = event{kind: evNack, h: h}
		case <-sub.stop:
			return
		}
		select {
		case sub.events <- ev:
		case <-sub.stop:
		}
	}()
}

func (sub *subscription) handle(ev event) {
	switch ev.kind {
	case evAck:
		h := ev.h
		h.cancel()
		if sub.held[h.row.ID] != h {
			return // released meanwhile (shutdown): nothing to record
		}
		h.acked = true
		sub.acks[h.token] = append(sub.acks[h.token], h.row.ID)
		sub.advanceChain(h)
	case evNack:
		h := ev.h
		h.cancel()
		if sub.held[h.row.ID] != h {
			return
		}
		sub.nack(h)
	case evFlushed:
		sub.busy.flush = false
		if ev.err != nil {
			// Put them back; the next flush retries after a pause.
			sub.acks[ev.token] = append(sub.acks[ev.token], ev.ids...)
			return
		}
		for _, id := range ev.ids {
			delete(sub.held, id)
		}
	case evSettled:
		sub.settle--
		for _, id := range ev.ids {
			delete(sub.held, id)
		}
	case evRenewed:
		sub.busy.renew = false
		for _, id := range ev.ids {
			if h, ok := sub.held[id]; ok && ev.err == nil {
				h.renewedAt = ev.stamps
			}
		}
	}
}

// advanceChain emits the next row of h's key after h was acked.
func (sub *subscription) advanceChain(h *held) {
	if h.chain == "" {
		return
	}
	q := sub.chains[h.chain]
	if len(q) == 0 {
		delete(sub.chains, h.chain)
		return
	}
	sub.chains[h.chain] = q[1:]
	sub.makeReady(q[0])
}

// nack records the failure of h and gives back the rows queued behind it:
// they must not overtake it.
func (sub *subscription) nack(h *held) {
	var behind []*held
	if h.chain != "" {
		behind = sub.chains[h.chain]
		delete(sub.chains, h.chain)
	}
	kind, cause, ok := retry.Kind(0), error(nil), false
	if o, found := retry.OutcomeFromContext(h.msg.Context()); found {
		kind, cause, ok = o.Get()
	}
	if !ok {
		kind, cause = retry.Transient, errors.New("nacked by the handler")
	}
	if cause == nil {
		cause = errors.New(kind.String())
	}
	cfg := sub.cfg()
	attempt := h.row.Attempts + 1
	if kind == retry.Transient && attempt >= cfg.MaxRetryCount {
		kind = retry.Permanent
		cause = fmt.Errorf("retry budget of %d attempts exhausted: %w", cfg.MaxRetryCount, cause)
	}
	fields := watermill.LogFields{"outbox_id": h.row.ID, "uuid": h.row.UUID, "topic": h.row.Topic, "attempt": attempt}
	var write func(ctx context.Context) (int, error)
	switch kind {
	case retry.Unavailable:
		write = func(ctx context.Context) (int, error) { return sub.s.store.Release(ctx, h.token, []int64{h.row.ID}) }
	case retry.Permanent:
		sub.s.logger.Error("Outbox message is dead: kept with its last error, requeue it once fixed", cause, fields)
		write = func(ctx context.Context) (int, error) {
			return sub.s.store.MarkDead(ctx, h.token, h.row.ID, cause.Error())
		}
	default:
		delay := retry.Backoff(attempt, cfg.RetryBackoffMin, cfg.RetryBackoffMax)
		fields["retry_in"] = delay.String()
		sub.s.logger.Info("Outbox message failed, will retry: "+cause.Error(), fields)
		write = func(ctx context.Context) (int, error) {
			return sub.s.store.RecordFailure(ctx, h.token, h.row.ID, cause.Error(), delay)
		}
	}
	sub.settleWith([]int64{h.row.ID}, write)
	if len(behind) > 0 {
		ids := make([]int64, len(behind))
		for i, b := range behind {
			ids[i] = b.row.ID
		}
		sub.release(h.token, ids)
	}
}

// release gives rows back without a charge; ids share one token.
func (sub *subscription) release(token string, ids []int64) {
	sub.settleWith(ids, func(ctx context.Context) (int, error) { return sub.s.store.Release(ctx, token, ids) })
}

// settleWith runs a fenced write in a worker, retrying database errors until
// it succeeds or the subscription stops; the rows leave the window after.
func (sub *subscription) settleWith(ids []int64, write func(ctx context.Context) (int, error)) {
	sub.settle++
	sub.spawn(func() event {
		delay := time.Duration(0)
		for {
			ctx, cancel := sub.workCtx()
			_, err := write(ctx)
			cancel()
			if err == nil {
				return event{kind: evSettled, ids: ids}
			}
			delay = nextDelay(delay)
			sub.s.logger.Error("Outbox write failed, retrying", err, watermill.LogFields{"retry_in": delay.String()})
			select {
			case <-time.After(delay):
			case <-sub.stop:
				// The lease will expire and another claim will redo it.
				return event{kind: evSettled, ids: ids}
			}
		}
	})
}

// startFlush writes acked rows, one statement per claim token.
func (sub *subscription) startFlush() {
	for token, ids := range sub.acks {
		delete(sub.acks, token)
		sub.busy.flush = true
		sub.spawn(func() event {
			ctx, cancel := sub.workCtx()
			defer cancel()
			n, err := sub.s.store.MarkPublished(ctx, token, ids, sub.cfg().PublishedRetention > 0)
			if err != nil {
				sub.s.logger.Error("Outbox ack write failed, retrying", err, nil)
				select {
				case <-time.After(dbRetryMin):
				case <-sub.stop:
				}
				return event{kind: evFlushed, token: token, ids: ids, err: err}
			}
			if n < len(ids) {
				sub.s.logger.Info("Outbox lease lost before ack: another relay re-claimed some rows and may publish them again",
					watermill.LogFields{"acked": len(ids), "recorded": n})
			}
			return event{kind: evFlushed, token: token, ids: ids}
		})
		return // one token per flush; the rest go next round
	}
}

// startRenew extends the lease of rows held past half of it.
func (sub *subscription) startRenew() {
	if sub.busy.renew {
		return
	}
	lease := sub.cfg().ClaimTimeout
	due := time.Now().Add(-lease / 2)
	byToken := make(map[string][]int64)
	for id, h := range sub.held {
		if h.renewedAt.Before(due) {
			byToken[h.token] = append(byToken[h.token], id)
		}
	}
	if len(byToken) == 0 {
		return
	}
	sub.busy.renew = true
	sub.spawn(func() event {
		at := time.Now()
		var all []int64
		var firstErr error
		for token, ids := range byToken {
			ctx, cancel := sub.workCtx()
			n, err := sub.s.store.Renew(ctx, token, ids, lease)
			cancel()
			if err != nil {
				firstErr = err
				sub.s.logger.Error("Outbox lease renewal failed", err, nil)
				continue
			}
			if n < len(ids) {
				sub.s.logger.Info("Outbox lease lost: another relay re-claimed rows this one still holds",
					watermill.LogFields{"held": len(ids), "renewed": n})
			}
			all = append(all, ids...)
		}
		return event{kind: evRenewed, ids: all, err: firstErr, stamps: at}
	})
}

// shutdown closes the channel, lets messages in the handler finish for a
// short grace, then releases every claim still held and waits for workers.
func (sub *subscription) shutdown() {
	close(sub.out)
	// Rows not yet handed out go back at once.
	sub.releaseUnemitted()

	grace := time.NewTimer(min(closeGrace, sub.cfg().ClaimTimeout/2))
	defer grace.Stop()
wait:
	for sub.emittedUnsettled() > 0 || sub.busy.flush || sub.busy.claim || sub.settle > 0 || len(sub.acks) > 0 {
		if !sub.busy.flush && len(sub.acks) > 0 {
			sub.startFlush()
		}
		select {
		case ev := <-sub.events:
			if ev.kind == evClaimed {
				sub.busy.claim = false
				// Claimed while closing: give them straight back.
				if ev.err == nil && len(ev.rows) > 0 {
					ids := make([]int64, len(ev.rows))
					for i, r := range ev.rows {
						ids[i] = r.ID
						sub.held[r.ID] = &held{row: r, token: ev.token}
					}
					sub.release(ev.token, ids)
				}
				continue
			}
			sub.handle(ev)
			if ev.kind == evNack || ev.kind == evAck {
				sub.releaseUnemitted() // rows a chain would have emitted next
			}
		case <-grace.C:
			break wait
		}
	}
	// Whatever is still in the handler loses its claim; a late ack is not
	// recorded, so the row is published again later (at-least-once).
	byToken := make(map[string][]int64)
	for id, h := range sub.held {
		if h.cancel != nil {
			h.cancel()
		}
		if !h.acked {
			byToken[h.token] = append(byToken[h.token], id)
		}
	}
	close(sub.stop)
	ctx, cancel := sub.workCtx()
	defer cancel()
	for token, ids := range sub.acks {
		if _, err := sub.s.store.MarkPublished(ctx, token, ids, sub.cfg().PublishedRetention > 0); err != nil {
			sub.s.logger.Error("Outbox ack write on close failed; the rows will be published again", err, nil)
		}
	}
	for token, ids := range byToken {
		if _, err := sub.s.store.Release(ctx, token, ids); err != nil {
			sub.s.logger.Error("Outbox release on close failed; the rows return when their lease expires", err, nil)
		}
	}
	sub.work.Wait()
}

func (sub *subscription) releaseUnemitted() {
	byToken := make(map[string][]int64)
	for _, h := range sub.ready {
		byToken[h.token] = append(byToken[h.token], h.row.ID)
		h.cancel()
	}
	sub.ready = nil
	for key, q := range sub.chains {
		for _, h := range q {
			byToken[h.token] = append(byToken[h.token], h.row.ID)
		}
		sub.chains[key] = nil
	}
	for token, ids := range byToken {
		sub.release(token, ids)
	}
}

func (sub *subscription) emittedUnsettled() int {
	n := 0
	for _, h := range sub.held {
		if h.msg != nil && !h.acked {
			n++
		}
	}
	return n
}
