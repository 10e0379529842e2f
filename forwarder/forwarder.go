package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// DefaultHandlerName names the forwarder's handler on the router.
const DefaultHandlerName = "watermill_outbox_forwarder"

var (
	// ErrAttached is returned by Run when the forwarder was added to the
	// caller's router: run that router instead.
	ErrAttached = errors.New("outbox forwarder: attached to a caller's router; run the router")
	// ErrRunning is returned by a second Run.
	ErrRunning = errors.New("outbox forwarder: already running")
)

// Config configures a Forwarder.
type Config struct {
	// Outbox holds the relay settings: polling interval, batch size, retry
	// budget, claim timeout, backoff, retention, in-flight window, ordering.
	// Zero fields take the defaults documented on config.Config.
	Outbox config.Config

	// Router, when set, gets the forwarder's handler, so its middlewares,
	// plugins and logging apply; the caller runs and closes it. Do not put
	// PoisonQueue, InstantAck or Deduplicator on it: they ack a message
	// whose publish failed, and the row would be marked published unsent.
	// Default nil: the forwarder makes a router of its own (Run, Close).
	Router *message.Router

	// HandlerName names the handler on the router. Default
	// DefaultHandlerName; zero means the default.
	HandlerName string

	// Classifier tells transient, unavailable-destination and permanent
	// publish errors apart. Default retry.DefaultClassifier; nil means the
	// default.
	Classifier retry.Classifier

	// QuickRetries retries a transiently failed publish in process before
	// the row is given back with backoff; they stop before half the claim
	// timeout. Default 0: none.
	QuickRetries int
}

func (c *Config) setDefaults() {
	c.Outbox.SetDefaults()
	if c.HandlerName == "" {
		c.HandlerName = DefaultHandlerName
	}
}

// Validate reports invalid settings, naming the field.
func (c Config) Validate() error {
	var errs []error
	if err := c.Outbox.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("Outbox: %w", err))
	}
	if c.QuickRetries < 0 {
		errs = append(errs, fmt.Errorf("QuickRetries: must not be negative, got %d", c.QuickRetries))
	}
	return errors.Join(errs...)
}

// Forwarder relays outbox rows to a destination publisher: a Subscriber over
// the outbox feeds a router handler that republishes each message under its
// destination topic with its UUID, payload and metadata (as headers) intact,
// the partition key included (the Kafka key, with sink.NewKafkaPublisher).
// A row is marked published only after the destination's Publish returned
// nil, which for the sinks in package sink means the broker confirmed it.
// Delivery is at least once: a crash between the broker's confirmation and
// the ack's write publishes the message again, with the same UUID.
type Forwarder struct {
	sub       *Subscriber
	dest      message.Publisher
	router    *message.Router
	ownRouter bool
	retry     *retry.Middleware
	logger    watermill.LoggerAdapter

	mu      sync.Mutex
	running bool
	closed  bool
}

// NewForwarder returns a Forwarder from the rows of store to destination. A
// nil logger logs nothing.
func NewForwarder(store outbox.Store, destination message.Publisher, config Config, logger watermill.LoggerAdapter) (*Forwarder, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if destination == nil {
		return nil, errors.New("invalid config: destination publisher is nil")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	sub, err := NewSubscriber(store, config.Outbox, logger)
	if err != nil {
		return nil, err
	}
	mw, err := retry.NewMiddleware(retry.MiddlewareConfig{
		MaxRetryCount: config.Outbox.MaxRetryCount,
		Classifier:    config.Classifier,
		QuickRetries:  config.QuickRetries,
		Lease:         config.Outbox.ClaimTimeout,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	f := &Forwarder{sub: sub, dest: destination, router: config.Router, retry: mw, logger: logger}
	if f.router == nil {
		f.ownRouter = true
		if f.router, err = message.NewRouter(message.RouterConfig{}, logger); err != nil {
			return nil, fmt.Errorf("outbox forwarder: router: %w", err)
		}
	}
	// Handler level, so it sees the publish error before the caller's
	// router middlewares do, provided they were added before NewForwarder
	// (Watermill applies middlewares in the order they were added).
	f.router.AddConsumerHandler(config.HandlerName, AllTopics, sub, f.forward).AddMiddleware(mw.Middleware)
	return f, nil
}

// relayKeys are added by the Subscriber and never reach the broker.
var relayKeys = []string{outbox.OutboxIDMetadataKey, outbox.AttemptMetadataKey, TopicMetadataKey}

func (f *Forwarder) forward(msg *message.Message) error {
	topic := msg.Metadata.Get(TopicMetadataKey)
	if topic == "" {
		return retry.PermanentError(errors.New("message has no destination topic: not from the outbox subscriber"))
	}
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = make(message.Metadata, len(msg.Metadata))
	for k, v := range msg.Metadata {
		out.Metadata[k] = v
	}
	for _, k := range relayKeys {
		delete(out.Metadata, k)
	}
	out.SetContext(msg.Context())
	return f.dest.Publish(topic, out)
}

// Subscriber returns the outbox subscriber feeding the forwarder, for Wake.
func (f *Forwarder) Subscriber() *Subscriber { return f.sub }

// Run runs the forwarder's own router until ctx ends or Close. It returns
// ErrAttached when the forwarder was added to the caller's router, ErrRunning
// on a second call, and ErrClosed after Close.
func (f *Forwarder) Run(ctx context.Context) error {
	f.mu.Lock()
	switch {
	case !f.ownRouter:
		f.mu.Unlock()
		return ErrAttached
	case f.closed:
		f.mu.Unlock()
		return ErrClosed
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
