package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/e0a82c8c/watermill-outbox/internal/delivery"
	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/internal/relayretry"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// The defaults of Config, and the topic that subscribes to all.
const (
	// DefaultHandlerName names the forwarder's handler on the router.
	DefaultHandlerName = "watermill_outbox_forwarder"

	// DefaultMessagingSystem is the messaging.system of send spans when the
	// destination does not say (see Config.MessagingSystem).
	DefaultMessagingSystem = "watermill"

	// AllTopics subscribes to the rows of every destination topic the
	// subscriber's filter admits; the forwarder uses it. The row's topic
	// is in watermilloutbox.TopicMetadataKey.
	AllTopics = "*"
)

var (
	// ErrAttached is returned by Run when the forwarder was added to the
	// caller's router: run that router instead.
	ErrAttached = errors.New("outbox forwarder: attached to a caller's router; run the router")
	// ErrRunning is returned by a second Run.
	ErrRunning = errors.New("outbox forwarder: already running")

	// errLapsed is a delivery's error when the relay was declared dead
	// after handing the row out and before the handler published it.
	errLapsed = errors.New("outbox forwarder: not published: the relay was declared dead since the row was handed out; other relays may hold it now")
)

// Config configures a Forwarder: what is the forwarder's own. Every relay
// setting (polling, batch size, retry budget, lease, backoff, retention,
// window, ordering, wake-ups, the pause while the broker is down) comes
// from the store's config.Config.
type Config struct {
	// Router, when set, gets the forwarder's handler, so its middlewares,
	// plugins and logging apply; the caller runs and closes it. Any
	// middleware is safe: a row is settled by what the forwarder's handler
	// recorded for it, never by the router's ack alone (see Forwarder).
	// Default nil: the forwarder makes a router of its own (Run, Close).
	Router *message.Router

	// HandlerName names the handler on the router; two forwarders on one
	// router need two names. Default DefaultHandlerName; empty means the
	// default.
	HandlerName string

	// Topics limits the forwarder to destination topics matching these
	// patterns ("orders.placed", or "orders.*" by prefix): two services
	// sharing one table, each relaying its own topics to its own broker,
	// give each forwarder its own. Per-key order is unaffected. Default nil:
	// every topic.
	Topics []string

	// Classifier tells transient, unavailable-destination and permanent
	// publish errors apart. Default retry.DefaultClassifier, which reads the
	// marks the publishers of package sink put on their errors; nil means
	// the default.
	Classifier retry.Classifier

	// QuickRetries retries a transiently failed publish in process before
	// the row is given back with backoff; they stop before half the claim
	// timeout. Default 0: none. Must not be negative.
	QuickRetries int

	// Observer is told of the relay's claims, publishes, failures, dead
	// rows, fenced writes and pauses: set it to a *metrics.Metrics
	// (metrics.New), which exports them to Prometheus. Default nil:
	// nobody, and nothing is measured.
	Observer observe.Observer

	// TracerProvider makes the span of each publish to the destination
	// (see Forwarder). Default otel.GetTracerProvider(); nil means the
	// default, which, if no SDK is installed yet, starts spans only once
	// otel.SetTracerProvider installs one. noop.NewTracerProvider()
	// turns them off.
	TracerProvider trace.TracerProvider

	// MessagingSystem is the messaging.system attribute of the send spans.
	// Default: what the destination names with a MessagingSystem() string
	// method ("kafka" for sink.KafkaPublisher, "rabbitmq" for
	// sink.AMQPPublisher), else DefaultMessagingSystem ("watermill"); empty
	// means the default. With "kafka" the spans carry the partition key as
	// messaging.kafka.message.key.
	MessagingSystem string
}

func (c *Config) setDefaults() {
	if c.HandlerName == "" {
		c.HandlerName = DefaultHandlerName
	}
}

// Validate reports invalid settings, naming the field.
func (c Config) Validate() error {
	var errs []error
	if c.QuickRetries < 0 {
		errs = append(errs, fmt.Errorf("QuickRetries: must not be negative, got %d", c.QuickRetries))
	}
	if _, err := parseTopicFilter(c.Topics); err != nil {
		errs = append(errs, fmt.Errorf("Topics: %w", err))
	}
	return errors.Join(errs...)
}

// Forwarder relays outbox rows to a destination publisher: a Subscriber over
// the outbox feeds a router handler that republishes each message under its
// destination topic with its UUID, payload and metadata (as headers) intact,
// the partition key included (the Kafka key, with sink.NewKafkaPublisher).
//
// A row is marked published only when the destination's Publish returned nil
// for that message, which for the sinks in package sink means the broker
// confirmed it. The handler records each delivery's outcome, and the row's
// fate follows that record, whatever the router's middlewares made of the
// ack: a message a middleware acked although its publish failed
// (PoisonQueue) is retried, and dead after MaxRetryCount attempts; one acked
// before it was handled (InstantAck) waits for the handler's record; one
// acked and never handled (Deduplicator) counts as a failed attempt. The
// first and the last are logged once, naming the likely middleware.
//
// Delivery is at least once: a crash between the broker's confirmation and
// the ack's write publishes the message again, with the same UUID.
//
// Each call of the destination's Publish is an OpenTelemetry span (through
// Config.TracerProvider) following the messaging conventions: named
// "send {topic}", kind producer, with messaging.system (see
// Config.MessagingSystem), messaging.destination.name,
// messaging.operation.type and .name "send", messaging.message.id (the
// message UUID), messaging.message.body.size and, for Kafka,
// messaging.kafka.message.key (the partition key, when there is one); a
// failure sets the error status and error.type (the retry.Kind:
// "transient", "unavailable" or "permanent"). The span is linked to the
// trace context stored with the row (the traceparent and tracestate
// metadata the Publisher and the EventBus write), not its child, and that
// stored context reaches the broker unchanged as headers, so consumers
// continue the writer's trace. A span that is not recording costs only its
// start: the attributes and the link are added after it, so samplers see
// the name and the kind alone.
//
// Config.Observer, when set, is told of every claim, publish, failed
// delivery, dead row, fenced write and pause.
type Forwarder struct {
	sub       *Subscriber
	dest      message.Publisher
	router    *message.Router
	ownRouter bool
	retry     *relayretry.Middleware
	logger    watermill.LoggerAdapter
	obs       observe.Observer // nil: none
	handler   string
	tracing   tracing

	mu      sync.Mutex
	running bool
	closed  bool
}

// NewForwarder returns a Forwarder from the rows of store to destination,
// run by the store's settings. A nil logger logs nothing.
func NewForwarder(store relaystore.Store, destination message.Publisher, config Config, logger watermill.LoggerAdapter) (*Forwarder, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if nilcheck.IsNil(destination) {
		return nil, errors.New("invalid config: destination publisher is nil")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	obs := config.Observer
	if nilcheck.IsNil(obs) {
		obs = nil
	}
	sub, err := newSubscriber(store, subscriberConfig{Topics: config.Topics}, logger, handlerVerdicts{}, obs, config.HandlerName)
	if err != nil {
		return nil, err
	}
	cfg := sub.config
	var onPause func(bool, time.Time)
	var onUnavailable func(*message.Message, error)
	if obs != nil {
		onPause = func(paused bool, since time.Time) {
			obs.ObservePause(observe.PauseEvent{Handler: config.HandlerName, Paused: paused, Since: since})
		}
		// Each failed attempt of an outage, as it happens (the row is
		// retried in place, and its release, if any, is not counted again).
		onUnavailable = func(msg *message.Message, err error) {
			if row := rowFromContext(msg.Context()); row != nil {
				obs.ObserveFailure(observe.FailureEvent{Handler: config.HandlerName, Topic: row.Topic, Kind: observe.FailureUnavailable, Err: err})
			}
		}
	}
	classifier := config.Classifier
	if classifier == nil {
		classifier = retry.DefaultClassifier
	}
	mw, err := relayretry.NewMiddleware(relayretry.MiddlewareConfig{
		Classifier:        classifier,
		QuickRetries:      config.QuickRetries,
		Lease:             cfg.ClaimTimeout,
		CircuitMaxBackoff: cfg.UnavailableBackoffMax,
		CircuitMinBackoff: min(relayretry.DefaultCircuitMinBackoff, cfg.UnavailableBackoffMax),
		OnPause:           onPause,
		OnUnavailable:     onUnavailable,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	f := &Forwarder{
		sub: sub, dest: destination, router: config.Router, retry: mw, logger: logger,
		obs: obs, handler: config.HandlerName,
		tracing: newTracing(config.TracerProvider, destination, config.MessagingSystem, classifier),
	}
	if f.router == nil {
		f.ownRouter = true
		if f.router, err = message.NewRouter(message.RouterConfig{}, logger); err != nil {
			return nil, fmt.Errorf("outbox forwarder: router: %w", err)
		}
	}
	if err := addHandler(f.router, config.HandlerName, sub, f.handle); err != nil {
		return nil, err
	}
	return f, nil
}

// addHandler adds the forwarder's handler, turning Watermill's panic on a
// taken name into an error.
func addHandler(r *message.Router, name string, sub *Subscriber, h message.NoPublishHandlerFunc) (err error) {
	taken := fmt.Errorf("invalid config: HandlerName %q: the router has a handler of that name already; give each forwarder on one router its own HandlerName", name)
	if _, ok := r.Handlers()[name]; ok {
		return taken
	}
	defer func() {
		if p := recover(); p != nil {
			if _, dup := p.(message.DuplicateHandlerNameError); !dup {
				panic(p)
			}
			err = taken
		}
	}()
	r.AddConsumerHandler(name, AllTopics, sub, h)
	return nil
}

// handle is the forwarder's router handler. The circuit and the quick
// retries of relayretry.Middleware run inside it, whatever middlewares the
// router adds around it, and it records the outcome of this delivery for
// the subscriber.
func (f *Forwarder) handle(msg *message.Message) error {
	rec := delivery.FromContext(msg.Context())
	if rec != nil {
		already, err := rec.Begin()
		if err != nil {
			return err
		}
		if already {
			return nil // published by an earlier call for this delivery
		}
		if !f.sub.mayPublish(msg.Context()) {
			// Given back uncharged, fenced: the row is its new holder's, or
			// claimed again.
			rec.End(retry.Unavailable, errLapsed)
			return errLapsed
		}
	}
	_, kind, err := f.retry.Handle(f.publish, msg)
	if rec != nil {
		rec.End(kind, err)
	}
	return err
}

// publish sends msg to its destination topic without the relay's keys.
func (f *Forwarder) publish(msg *message.Message) ([]*message.Message, error) {
	topic := msg.Metadata.Get(outbox.TopicMetadataKey)
	if topic == "" {
		return nil, retry.PermanentError(errors.New("message has no destination topic: not from the outbox subscriber"))
	}
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = make(message.Metadata, len(msg.Metadata))
	for k, v := range msg.Metadata {
		if !outbox.IsRelayMetadataKey(k) {
			out.Metadata[k] = v
		}
	}
	out.SetContext(msg.Context())
	err := f.tracing.publish(msg, out, topic, func() error { return f.dest.Publish(topic, out) })
	if err == nil && f.obs != nil {
		if row := rowFromContext(msg.Context()); row != nil {
			f.obs.ObservePublish(observe.PublishEvent{Handler: f.handler, Topic: topic, CreatedAt: row.CreatedAt, ConfirmedAt: time.Now()})
		}
	}
	return nil, err
}

// Subscriber returns the outbox subscriber feeding the forwarder: pass it
// as watermilloutbox.PublisherConfig.Notifier for an in-process wake-up.
func (f *Forwarder) Subscriber() *Subscriber { return f.sub }

// Paused reports whether the forwarder is pausing because the destination
// is unavailable, and since when (zero when not paused). A health check can
// alert on a pause that lasts.
func (f *Forwarder) Paused() (paused bool, since time.Time) { return f.retry.Paused() }

// Heartbeat reports the relay's standing in the store's relay registry:
// when its last beat landed, whether it has expired (other relays may take
// its rows over), how often it was declared dead. A health check can fail
// while Expired holds.
func (f *Forwarder) Heartbeat() Heartbeat { return f.sub.Heartbeat() }

// Run runs the forwarder's own router until ctx ends or Close. It returns
// ErrAttached when the forwarder was added to the caller's router, ErrRunning
// on a second call, and watermilloutbox.ErrClosed after Close.
func (f *Forwarder) Run(ctx context.Context) error {
	f.mu.Lock()
	switch {
	case !f.ownRouter:
		f.mu.Unlock()
		return ErrAttached
	case f.closed:
		f.mu.Unlock()
		return fmt.Errorf("outbox forwarder: %w", outbox.ErrClosed)
	case f.running:
		f.mu.Unlock()
		return ErrRunning
	}
	f.running = true
	f.mu.Unlock()
	return f.router.Run(ctx)
}

// Running is closed once the router runs its handlers.
func (f *Forwarder) Running() chan struct{} { return f.router.Running() }

// Close stops the forwarder: the subscriber stops claiming, messages being
// published get a short grace to finish, every claim still held is
// released. It closes its own router (not a caller's) and never the
// destination publisher. Idempotent; safe before Run.
//
// With an attached router, close the router first (it stops handing out
// messages and waits for its handlers), then the forwarder, then the
// destination publisher.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	running := f.running
	f.mu.Unlock()
	var errs []error
	// A router that never ran has nothing to stop (and its Close would
	// wait for a Run that will not come).
	if f.ownRouter && running {
		errs = append(errs, f.router.Close())
	}
	errs = append(errs, f.sub.Close())
	return errors.Join(errs...)
}
