package watermilloutbox_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// A plain message.Publisher user inside a traced request: the row carries
// the request's W3C trace context, and the caller's message is untouched.
func TestPublisherStoresCallersTraceContext(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)

	tx := ebBegin(t, db)
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	msg.Metadata.Set("x-tenant", "acme")
	msg.SetContext(outbox.ContextWithTx(ebSpanContext(t, context.Background()), tx))
	require.NoError(t, pub.Publish("orders", msg))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 1)
	require.Equal(t, message.Metadata{"x-tenant": "acme", "traceparent": ebTraceparent, "tracestate": "vendor=abc"}, rows[0].Metadata)
	require.Equal(t, message.Metadata{"x-tenant": "acme"}, msg.Metadata, "the caller's message is not changed")
}

// A message that carries a traceparent keeps it; one without a span in its
// context gets none.
func TestPublisherKeepsOwnTraceparentAndAddsNoneWithoutSpan(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)

	tx := ebBegin(t, db)
	own := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	withOwn := message.NewMessage(watermill.NewUUID(), nil)
	withOwn.Metadata.Set("traceparent", own)
	withOwn.SetContext(outbox.ContextWithTx(ebSpanContext(t, context.Background()), tx))
	untraced := message.NewMessage(watermill.NewUUID(), nil)
	untraced.SetContext(outbox.ContextWithTx(context.Background(), tx))
	require.NoError(t, pub.Publish("orders", withOwn, untraced))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 2)
	require.Equal(t, message.Metadata{"traceparent": own}, rows[0].Metadata, "its own traceparent, no tracestate added")
	require.Empty(t, rows[1].Metadata)
}

type cqrsOrderPlaced struct {
	OrderID string `json:"order_id"`
}

// Watermill's own cqrs.EventBus copies its ctx into the message: published
// through the outbox Publisher inside a traced context (a real SDK span),
// the row carries that span's traceparent.
func TestCQRSEventBusPublishStoresTraceparent(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) { return p.EventName, nil },
		Marshaler:            cqrs.JSONMarshaler{GenerateName: cqrs.StructName},
	})
	require.NoError(t, err)

	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("test").Start(context.Background(), "place order")
	defer span.End()

	tx := ebBegin(t, db)
	require.NoError(t, bus.Publish(outbox.ContextWithTx(ctx, tx), cqrsOrderPlaced{OrderID: "o-1"}))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 1)
	sc := span.SpanContext()
	require.Equal(t, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01", rows[0].Metadata.Get("traceparent"))
	require.Equal(t, "cqrsOrderPlaced", rows[0].Topic)
}

// The EventBus with propagation turned off stores no trace context, even
// though its message context (which the Publisher reads) has the span.
func TestEventBusPropagationOffStoresNoTraceContext(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{Propagator: propagation.NewCompositeTextMapPropagator()})

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(ebSpanContext(t, context.Background()), tx, ebOrderPlaced{OrderID: "o-1"}))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 1)
	require.NotContains(t, rows[0].Metadata, "traceparent")
	require.NotContains(t, rows[0].Metadata, "tracestate")
}
