package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// subscriberConfig configures a Subscriber. The relay settings (polling,
// batch size, retry budget, lease, backoff, retention, window, ordering,
// wake-ups) come from the store's config.Config.
type subscriberConfig struct {
	// Topics limits the rows claimed to destination topics matching these
	// patterns: "orders.placed" exactly, "orders.*" by prefix, "*" every
	// topic; a "*" anywhere else is an error. Several relays, each with its own
	// destination, can share one table this way; per-key order holds,
	// since a key's rows share a topic. Default nil: every topic.
	Topics []string
}

// Subscriber is the message.Subscriber over the outbox table that feeds a
// Forwarder (Forwarder.Subscriber returns it: pass it as
// watermilloutbox.PublisherConfig.Notifier). It claims rows through a
// relaystore.Store and emits them as messages with their original
// UUID, payload and metadata, plus the relay keys OutboxIDMetadataKey,
// AttemptMetadataKey and TopicMetadataKey.
//
//   - A delivery the forwarder's handler recorded as published marks the
//     row published (or deletes it, per retention), fenced by the claim
//     token. Acks are written in batches.
//   - A failed delivery charges an attempt and makes the row due again
//     after exponential backoff with jitter, releasing the claim at once;
//     at MaxRetryCount the row is dead.
//   - Rows leased longer than half the claim timeout get their lease renewed
//     while they are held. The subscriber beats in the store's relay
//     registry (relaystore.RelayRegistry) every RelayTimeout/3; a
//     crashed relay's rows are claimed again once its heartbeat is
//     RelayTimeout old, or, on a store without a registry, when their
//     lease expires. While its own last beat is older than that it emits
//     nothing (others may be taking its rows over), and when a beat finds
//     it was declared dead it gives back the rows it has not emitted.
//   - With ordering on, messages of one partition key are emitted one at a
//     time, in id order: the next only after the previous was published. A
//     failure releases the rest of that key's claimed rows.
//   - Close, or the end of Subscribe's ctx, stops claiming, closes the
//     channel and gives back at once the rows not handed out and those
//     whose handler has not begun; it waits for the messages being handled
//     to be settled for at most 5s (half the claim timeout if that is
//     less), then releases every claim still held, its last writes bounded
//     by the relay's 30s database call timeout. It never marks a row
//     published whose publish was not recorded.
//
// A row is settled by what the forwarder's handler recorded for its
// delivery (see Forwarder), not by the router's ack alone.
//
// A database error never ends a subscription: it is logged and retried with
// backoff.
type Subscriber struct {
	store  relaystore.Store
	config config.Config
	topics relaystore.TopicFilter
	logger watermill.LoggerAdapter
	// source fills each delivery's record: the forwarder's handler, or,
	// for a plain subscriber (tests, Watermill's universal suite), the
	// consumer's ack.
	source verdictSource
	// obs is the forwarder's Config.Observer (nil: none), told of claims,
	// failures, dead rows and fenced writes under the handler's name.
	obs     observe.Observer
	handler string
	live    *liveness // heartbeat in the store's relay registry

	closing   chan struct{}
	closeOnce sync.Once
	subsWg    sync.WaitGroup

	mu        sync.Mutex
	subs      map[*subscription]struct{}
	purging   bool // the maintenance loop (purgeLoop) runs
	listening bool

	soon       atomic.Bool  // a Notify(false) wake-up is scheduled
	contention atomic.Int64 // retryable database contention met
	warned     [3]sync.Once // misuse warnings, see warnMisuse
}

var _ message.Subscriber = (*Subscriber)(nil)

// newSubscriber returns a Subscriber claiming rows from store, run by the
// store's settings, whose rows are settled by what source records. A nil
// logger logs nothing.
func newSubscriber(store relaystore.Store, sc subscriberConfig, logger watermill.LoggerAdapter, source verdictSource, obs observe.Observer, handler string) (*Subscriber, error) {
	if nilcheck.IsNil(store) {
		return nil, errors.New("invalid config: store is nil")
	}
	cfg := store.Config()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: the store's config: %w", err)
	}
	topics, err := parseTopicFilter(sc.Topics)
	if err != nil {
		return nil, fmt.Errorf("invalid config: Topics: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Subscriber{
		store:   store,
		config:  cfg,
		topics:  topics,
		logger:  logger,
		source:  source,
		obs:     obs,
		handler: handler,
		closing: make(chan struct{}),
		subs:    make(map[*subscription]struct{}),
		live:    newLiveness(store, cfg.RelayTimeout, logger, obs, handler),
	}, nil
}

// Subscribe claims and emits the rows of one destination topic, or of all
// the subscriber's filter admits with AllTopics, until ctx ends or Close.
// Several subscriptions, in this or other processes, share the rows: each
// row goes to one of them at a time. A topic outside the filter is an
// error.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	filter := s.topics
	switch {
	case topic == "":
		return nil, fmt.Errorf("outbox subscriber: empty topic (use %q for all)", AllTopics)
	case topic != AllTopics:
		if !s.topics.Match(topic) {
			return nil, fmt.Errorf("outbox subscriber: topic %q is outside the subscriber's Topics (%s)", topic, s.topics)
		}
		filter = relaystore.TopicFilter{Names: []string{topic}}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closing:
		return nil, fmt.Errorf("outbox subscriber: %w", outbox.ErrClosed)
	default:
	}
	if !s.purging {
		s.purging = true
		s.subsWg.Add(1)
		go s.purgeLoop()
	}
	if !s.listening {
		s.listening = true
		s.subsWg.Add(1)
		go s.listen()
	}
	s.live.start()
	sub := newSubscription(s, ctx, filter)
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

// listen runs the store's commit notifications (Store.Listen) into Wake
// until Close. A store without them leaves the relay polling.
func (s *Subscriber) listen() {
	defer s.subsWg.Done()
	if s.config.DisableNotify {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-s.closing
		cancel()
	}()
	err := s.store.Listen(ctx, s.Wake)
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, relaystore.ErrNoWakeUps):
		s.logger.Debug("Outbox relay polls for new rows: "+err.Error(), nil)
	default:
		s.logger.Error("Outbox commit notifications ended; polling only", err, nil)
	}
}

// Wake makes every subscription claim now instead of at its next poll, and
// look once more NotifyInterval after that claim; a commit notification
// (the store's Listen, or a publisher in the same process) calls it. It
// never blocks.
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

// Notify implements watermilloutbox.Notifier, for a publisher in the same
// process (PublisherConfig.Notifier): committed rows wake the relay at once.
// Rows still in the caller's transaction are not visible yet, so the relay
// only looks NotifyInterval later (and once more after that, as after any
// wake-up); a transaction that commits later still is found by a
// notification or a poll. Several calls within one interval schedule one
// look. With DisableNotify it does nothing.
func (s *Subscriber) Notify(committed bool) {
	if s.config.DisableNotify {
		return
	}
	if committed {
		s.Wake()
		return
	}
	if s.soon.CompareAndSwap(false, true) {
		time.AfterFunc(s.config.NotifyInterval, func() {
			s.soon.Store(false)
			s.Wake()
		})
	}
}

var _ outbox.Notifier = (*Subscriber)(nil)

// Close ends every subscription as described on Subscriber and waits for
// them. It is idempotent and safe before Subscribe.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	s.closeOnce.Do(func() { close(s.closing) })
	s.mu.Unlock()
	s.subsWg.Wait()
	s.live.close() // after the subscriptions released their rows
	return nil
}

// mayPublish is the forwarder handler's last look before it publishes the
// row of ctx: it waits while the relay's heartbeat may have expired (others
// may be taking its rows over), and says no when the relay was declared
// dead since the row was handed out (the row may be another relay's now),
// or when ctx ended. A row whose context a middleware replaced is
// published.
func (s *Subscriber) mayPublish(ctx context.Context) bool {
	at, ok := ctx.Value(lapsesKey{}).(int64)
	if !ok {
		return true
	}
	n, ok := s.live.awaitAlive(ctx)
	return ok && n == at
}

// Heartbeat reports the subscriber's standing in the store's relay
// registry (see Heartbeat).
func (s *Subscriber) Heartbeat() Heartbeat { return s.live.heartbeat(time.Now()) }

// Contention returns how many database calls of the relay met retryable
// contention (deadlocks, serialization failures, lock timeouts) and were
// retried.
func (s *Subscriber) Contention() int64 { return s.contention.Load() }

// warnMisuse warns, once per kind and Subscriber, of router middlewares
// that ack or nack against what the handler recorded (see misuseOf).
// Nothing is lost either way (the row's fate follows the record), but the
// setup costs retries.
func (s *Subscriber) warnMisuse(kind misuse, h *held, err error) {
	fields := watermill.LogFields{"uuid": h.row.UUID, "outbox_id": h.row.ID, "topic": h.row.Topic}
	switch kind {
	case ackedFailed:
		s.warned[0].Do(func() {
			warn(s.logger, "Outbox message acked by the router although its publish failed: a router middleware acks failed messages "+
				"(PoisonQueue, or one that returns nil on error). The row is kept and retried, and dead after MaxRetryCount attempts; "+
				"remove that middleware from the forwarder's router", err, fields)
		})
	case ackedUnhandled:
		s.warned[1].Do(func() {
			warn(s.logger, "Outbox message acked by the router without being handled: a router middleware acks without calling the handler "+
				"(Deduplicator, or one that skips it). The row is kept and counted as a failed attempt; remove that middleware "+
				"from the forwarder's router", nil, fields)
		})
	case nackedPublished:
		s.warned[2].Do(func() {
			warn(s.logger, "Outbox message nacked by the router after the destination accepted it: a router middleware failed after "+
				"the forwarder's handler. The row is recorded as published", nil, fields)
		})
	}
}

// warner is a logger with a warning level (Watermill's LoggerAdapter has
// none).
type warner interface {
	Warn(msg string, fields watermill.LogFields)
}

// warn logs at warning level where the logger has one, else at error level.
func warn(logger watermill.LoggerAdapter, msg string, err error, fields watermill.LogFields) {
	if w, ok := logger.(warner); ok {
		if err != nil {
			fields = fields.Add(watermill.LogFields{"error": err.Error()})
		}
		w.Warn(msg, fields)
		return
	}
	logger.Error(msg, err, fields)
}
