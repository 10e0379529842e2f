package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/propagation"

	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
)

// IntegrationEvent marks events other services consume. The EventBus writes
// them to the outbox, in the caller's transaction, and the relay delivers
// them to the broker. Any other event is a domain event: it stays in the
// process and goes to the handlers registered with AddDomainHandler.
//
// A value receiver makes both T and *T integration events; with a pointer
// receiver the EventBus still treats a T value as one.
type IntegrationEvent interface {
	IntegrationEvent()
}

// PartitionKeyer is an optional interface of integration events. A non-empty
// PartitionKey is stored in the metadata under PartitionKeyMetadataKey: the
// relay publishes the messages of one key in the order they were written, and
// the Kafka sink uses it as the message key. An empty key sets nothing: the
// event has no order promise, unless the Marshaler set a key itself.
type PartitionKeyer interface {
	PartitionKey() string
}

// EventBusConfig configures an EventBus. The zero value is ready to use.
type EventBusConfig struct {
	// Marshaler turns integration events into messages, and names every
	// event: the name is what the outbox stores under EventNameMetadataKey,
	// what GenerateTopic receives and what domain handlers are keyed by.
	// Default, and what zero (nil) means:
	// cqrs.JSONMarshaler{GenerateName: cqrs.StructName}, so an event
	// "orders.OrderPlaced" is named "OrderPlaced". Consumers using Watermill's
	// cqrs must use a marshaler with the same names.
	Marshaler cqrs.CommandEventMarshaler

	// GenerateTopic returns the topic an integration event is published
	// to, from its name and the event itself. The topic must pass
	// ValidateTopic. Default, and what zero (nil) means: the event name.
	GenerateTopic func(eventName string, event any) (string, error)

	// Propagator writes the trace context of the Publish ctx into each
	// integration event's metadata, so the consumers' spans continue the
	// caller's trace. Default, and what zero (nil) means:
	// propagation.TraceContext{}, which writes the W3C "traceparent" and
	// "tracestate" keys when ctx carries a valid span context, and nothing
	// otherwise. propagation.NewCompositeTextMapPropagator() with no
	// arguments turns propagation off.
	Propagator propagation.TextMapPropagator
}

func (c *EventBusConfig) setDefaults() {
	if c.Marshaler == nil {
		c.Marshaler = cqrs.JSONMarshaler{GenerateName: cqrs.StructName}
	}
	if c.GenerateTopic == nil {
		c.GenerateTopic = func(eventName string, _ any) (string, error) { return eventName, nil }
	}
	if c.Propagator == nil {
		c.Propagator = propagation.TraceContext{}
	}
}

// Validate reports a Marshaler or Propagator that is a nil pointer wrapped in
// a non-nil interface: it would panic on first use. Nil fields are valid;
// they mean the defaults.
func (c EventBusConfig) Validate() error {
	var errs []error
	if c.Marshaler != nil && isNilPointer(c.Marshaler) {
		errs = append(errs, fmt.Errorf("Marshaler: nil %T", c.Marshaler))
	}
	// Only a nil pointer: propagation.NewCompositeTextMapPropagator() with
	// no arguments is a nil slice, and the documented way to turn
	// propagation off.
	if c.Propagator != nil && isNilPointer(c.Propagator) {
		errs = append(errs, fmt.Errorf("Propagator: nil %T", c.Propagator))
	}
	return errors.Join(errs...)
}

// EventBus publishes events from the code that changes the state they
// describe. Integration events (IntegrationEvent) go to the outbox through a
// message.Publisher, normally a *Publisher; domain events go, synchronously
// and in the caller's context, to the handlers registered with
// AddDomainHandler. Both happen inside the transaction the context carries
// (ContextWithTx, PublishTx): if it rolls back, so do the integration events
// and whatever the domain handlers wrote in it.
//
// An EventBus is safe for concurrent use.
type EventBus struct {
	publisher message.Publisher
	config    EventBusConfig
	logger    watermill.LoggerAdapter

	mu       sync.RWMutex
	handlers map[string][]domainHandler // by event name, in registration order
}

type domainHandler struct {
	handler   cqrs.EventHandler
	name      string       // for errors: HandlerName, or the handler's type
	eventType reflect.Type // of handler.NewEvent()
}

// NewEventBus returns an EventBus writing integration events to publisher,
// normally a *Publisher. Zero config fields take their defaults; a nil
// logger logs nothing.
func NewEventBus(publisher message.Publisher, config EventBusConfig, logger watermill.LoggerAdapter) (*EventBus, error) {
	if nilcheck.IsNil(publisher) {
		return nil, errors.New("outbox: NewEventBus: nil publisher")
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &EventBus{
		publisher: publisher,
		config:    config,
		logger:    logger,
		handlers:  map[string][]domainHandler{},
	}, nil
}

// AddDomainHandler registers h for the domain events named like h.NewEvent()
// (by the Marshaler's Name). An event may have several handlers; Publish
// calls them in registration order. A handler for an integration event is an
// error: those go to the outbox only. cqrs.NewEventHandler builds a handler
// from a function.
//
// A handler for *T also receives events published as T values (as a pointer
// to a copy), and one for T those published as *T.
func (b *EventBus) AddDomainHandler(h cqrs.EventHandler) error {
	if nilcheck.IsNil(h) {
		return errors.New("outbox: AddDomainHandler: nil handler")
	}
	hname := h.HandlerName()
	if hname == "" {
		hname = fmt.Sprintf("%T", h)
	}
	ev := h.NewEvent()
	if ev == nil {
		return fmt.Errorf("outbox: AddDomainHandler: handler %s: NewEvent returned nil", hname)
	}
	if isIntegrationEvent(ev) {
		return fmt.Errorf("outbox: AddDomainHandler: handler %s: %T is an IntegrationEvent; integration events go to the outbox, not to in-process handlers", hname, ev)
	}
	name := b.config.Marshaler.Name(ev)
	if name == "" {
		return fmt.Errorf("outbox: AddDomainHandler: handler %s: the Marshaler names %T \"\"", hname, ev)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.handlers[name] = append(b.handlers[name], domainHandler{handler: h, name: hname, eventType: reflect.TypeOf(ev)})
	return nil
}

// Publish publishes events in the transaction ctx carries (ContextWithTx).
// If the transaction in ctx rolls back, so do the integration events.
//
// Integration events are marshaled with the Marshaler, named in the
// metadata under EventNameMetadataKey, given their PartitionKey and the
// trace context of ctx, and stripped of "authorization" metadata keys (in any
// case), which must never be stored. The integration events of one call that
// share a topic are written by one publisher.Publish call, so with a
// *Publisher they are one INSERT; topics are written in the order of their
// first event, and events keep their order within a topic.
//
// Domain events are passed to their handlers, in registration order,
// synchronously and with ctx itself, so a handler writing through the
// transaction in ctx (TxFromContext) writes in the same transaction. The
// first handler error stops the call and is returned wrapped with the
// handler's name. An event that is neither an integration event nor has a
// domain handler is ErrUnhandledEvent: it would go nowhere.
//
// Every event is marshaled and matched to its handlers before anything is
// written, so an unhandled or unmarshalable event writes nothing. The
// integration events are then written before the domain handlers run, so
// events the handlers publish follow them in the outbox. Without a
// transaction in ctx a *Publisher fails with ErrNoTransaction, unless its
// AutoCommit is set; then a failing handler no longer undoes the written
// integration events.
func (b *EventBus) Publish(ctx context.Context, events ...any) error {
	if ctx == nil {
		return errors.New("outbox: EventBus.Publish: nil context")
	}
	type batch struct {
		topic string
		msgs  []*message.Message
	}
	type call struct {
		eventName string
		h         domainHandler
		event     any
	}
	var (
		batches []*batch
		byTopic = map[string]*batch{}
		calls   []call
	)
	for i, event := range events {
		if nilcheck.IsNil(event) {
			return fmt.Errorf("outbox: EventBus.Publish: event %d is nil", i)
		}
		name := b.config.Marshaler.Name(event)
		if name == "" {
			return fmt.Errorf("outbox: EventBus.Publish: the Marshaler names event %d (%T) \"\"", i, event)
		}

		if isIntegrationEvent(event) {
			topic, msg, err := b.marshal(ctx, name, event)
			if err != nil {
				return fmt.Errorf("outbox: EventBus.Publish: integration event %s: %w", name, err)
			}
			bt := byTopic[topic]
			if bt == nil {
				bt = &batch{topic: topic}
				byTopic[topic] = bt
				batches = append(batches, bt)
			}
			bt.msgs = append(bt.msgs, msg)
			continue
		}

		b.mu.RLock()
		handlers := b.handlers[name] // append-only: this slice is never modified
		b.mu.RUnlock()
		if len(handlers) == 0 {
			return fmt.Errorf("%w: event %d, %s (%T): implement IntegrationEvent to send it to the outbox, or AddDomainHandler to handle it in process",
				ErrUnhandledEvent, i, name, event)
		}
		for _, h := range handlers {
			adapted, ok := convertEvent(event, h.eventType)
			if !ok {
				return fmt.Errorf("outbox: EventBus.Publish: domain event %s: handler %s takes %s, not %T (two event types with one name?)",
					name, h.name, h.eventType, event)
			}
			calls = append(calls, call{eventName: name, h: h, event: adapted})
		}
	}

	for _, bt := range batches {
		if err := b.publisher.Publish(bt.topic, bt.msgs...); err != nil {
			return fmt.Errorf("outbox: EventBus.Publish: publish %d integration event(s) to %q: %w", len(bt.msgs), bt.topic, err)
		}
	}
	for _, c := range calls {
		if err := c.h.handler.Handle(ctx, c.event); err != nil {
			return fmt.Errorf("outbox: EventBus.Publish: domain event %s: handler %s: %w", c.eventName, c.h.name, err)
		}
	}
	return nil
}

// PublishTx publishes events in tx: Publish(ContextWithTx(ctx, tx), events...).
// If tx rolls back, so do the integration events. A nil tx is
// ErrNoTransaction.
func (b *EventBus) PublishTx(ctx context.Context, tx *sql.Tx, events ...any) error {
	if tx == nil {
		return fmt.Errorf("%w: PublishTx with a nil *sql.Tx", ErrNoTransaction)
	}
	if ctx == nil {
		return errors.New("outbox: EventBus.PublishTx: nil context")
	}
	return b.Publish(ContextWithTx(ctx, tx), events...)
}

// marshal builds the outbox message of one integration event.
func (b *EventBus) marshal(ctx context.Context, name string, event any) (string, *message.Message, error) {
	topic, err := b.config.GenerateTopic(name, event)
	if err != nil {
		return "", nil, fmt.Errorf("generate topic: %w", err)
	}
	if err := ValidateTopic(topic); err != nil {
		return "", nil, fmt.Errorf("generate topic: %w", err)
	}
	msg, err := b.config.Marshaler.Marshal(event)
	if err != nil {
		return "", nil, fmt.Errorf("marshal: %w", err)
	}
	if msg == nil {
		return "", nil, errors.New("marshal: the Marshaler returned a nil message")
	}
	if msg.UUID == "" {
		msg.UUID = watermill.NewUUID()
	}
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	if msg.Metadata.Get(EventNameMetadataKey) == "" { // cqrs.JSONMarshaler sets it already
		msg.Metadata.Set(EventNameMetadataKey, name)
	}
	if key, ok := partitionKey(event); ok && key != "" {
		msg.Metadata.Set(PartitionKeyMetadataKey, key)
	}
	// The Propagator writes the trace context, here for any publisher and
	// again (to the same effect) in a Publisher, which finds it in ctx.
	ctx = context.WithValue(ctx, propagatorKey{}, b.config.Propagator)
	msg.Metadata = withTraceContext(ctx, msg.Metadata)
	for k := range msg.Metadata {
		if defaultForbidden[normalMetadataKey(k)] { // credentials must never be stored
			delete(msg.Metadata, k)
		}
	}
	msg.SetContext(ctx) // the Publisher finds the transaction here
	return topic, msg, nil
}

// metadataCarrier adapts message.Metadata to propagation.TextMapCarrier.
type metadataCarrier message.Metadata

func (c metadataCarrier) Get(key string) string { return c[key] }
func (c metadataCarrier) Set(key, value string) { c[key] = value }
func (c metadataCarrier) Keys() []string        { return slices.Sorted(maps.Keys(c)) }

var (
	integrationEventType = reflect.TypeFor[IntegrationEvent]()
	partitionKeyerType   = reflect.TypeFor[PartitionKeyer]()
)

// isIntegrationEvent reports whether v, or a pointer to it, is an
// IntegrationEvent.
func isIntegrationEvent(v any) bool {
	if _, ok := v.(IntegrationEvent); ok {
		return true
	}
	t := reflect.TypeOf(v)
	return t != nil && t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(integrationEventType)
}

// partitionKey returns the PartitionKey of v, or of a pointer to a copy of v.
func partitionKey(v any) (string, bool) {
	if k, ok := v.(PartitionKeyer); ok {
		return k.PartitionKey(), true
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer || !reflect.PointerTo(rv.Type()).Implements(partitionKeyerType) {
		return "", false
	}
	p := reflect.New(rv.Type())
	p.Elem().Set(rv)
	return p.Interface().(PartitionKeyer).PartitionKey(), true
}

// convertEvent returns event as a value of type want: itself, a pointer to a
// copy of it, or what it points to.
func convertEvent(event any, want reflect.Type) (any, bool) {
	v := reflect.ValueOf(event)
	t := v.Type()
	switch {
	case t == want:
		return event, true
	case want.Kind() == reflect.Pointer && want.Elem() == t:
		p := reflect.New(t)
		p.Elem().Set(v)
		return p.Interface(), true
	case t.Kind() == reflect.Pointer && t.Elem() == want:
		return v.Elem().Interface(), true
	}
	return nil, false
}

// isNilPointer reports a non-nil interface holding a nil pointer: of the
// nil values nilcheck.IsNil knows, the only one that cannot be a working
// config value (a nil slice can: see Validate).
func isNilPointer(v any) bool {
	return v != nil && reflect.ValueOf(v).Kind() == reflect.Pointer && nilcheck.IsNil(v)
}
