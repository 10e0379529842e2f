package forwarder_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// spanNamed waits until exp holds an ended span named name.
func spanNamed(t *testing.T, exp *tracetest.InMemoryExporter, name string) tracetest.SpanStub {
	t.Helper()
	var found tracetest.SpanStub
	waitFor(t, 30*time.Second, "span "+name, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == name {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// A message written inside a traced request travels to Kafka with the
// request's traceparent unchanged, and the relay's publish is a producer
// span "send {topic}" linked to that request's span, not its child. A
// publish Kafka refuses is a span with the error status.
func TestSendSpanLinksToStoredTraceContext(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0]) // PostgreSQL
	topic := "orders_" + e.table
	brokers := testenv.Kafka(t, topic)
	kafkaPub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: brokers}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = kafkaPub.Close() })

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	// The service: a traced request writes an event (the Publisher stores
	// the request's trace context), and one for a topic Kafka refuses.
	ctx, request := tp.Tracer("service").Start(context.Background(), "place order")
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":1}`))
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "order-1")
	msg.SetContext(ctx)
	require.NoError(t, e.pub.Publish(topic, msg))
	bad := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	require.NoError(t, e.pub.Publish("illegal/topic!", bad))
	request.End()
	sc := request.SpanContext()
	traceparent := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"

	runForwarder(t, e.store, kafkaPub, forwarder.Config{TracerProvider: tp})

	records := testenv.ConsumeKafka(t, brokers, topic, 1, 30*time.Second)
	headers := map[string]string{}
	for _, h := range records[0].Headers {
		headers[h.Key] = string(h.Value)
	}
	require.Equal(t, traceparent, headers["traceparent"], "the stored trace context reaches the broker unchanged")

	send := spanNamed(t, exp, "send "+topic)
	require.Equal(t, trace.SpanKindProducer, send.SpanKind)
	a := attrs(send.Attributes)
	require.Equal(t, "kafka", a["messaging.system"].AsString())
	require.Equal(t, topic, a["messaging.destination.name"].AsString())
	require.Equal(t, "send", a["messaging.operation.type"].AsString())
	require.Equal(t, msg.UUID, a["messaging.message.id"].AsString())
	require.Equal(t, "order-1", a["messaging.kafka.message.key"].AsString())
	require.Len(t, send.Links, 1)
	require.Equal(t, sc.TraceID(), send.Links[0].SpanContext.TraceID(), "linked to the request's trace")
	require.Equal(t, sc.SpanID(), send.Links[0].SpanContext.SpanID())
	require.False(t, send.Parent.IsValid(), "a root of its own, not the request's child")
	require.NotEqual(t, sc.TraceID(), send.SpanContext.TraceID())
	require.Equal(t, codes.Unset, send.Status.Code)

	failed := spanNamed(t, exp, "send illegal/topic!")
	require.Equal(t, codes.Error, failed.Status.Code)
	require.Contains(t, failed.Status.Description, "illegal Kafka topic name")
	require.Equal(t, "permanent", attrs(failed.Attributes)["error.type"].AsString())
	require.Empty(t, failed.Links, "no stored trace context, no link")
	waitFor(t, 30*time.Second, "the refused row dead", func() bool {
		r, ok := e.row(t, bad.UUID)
		return ok && r.State == "dead"
	})
}

// A destination that names no messaging system gets the default, or the
// one Config.MessagingSystem says; the partition key is a Kafka attribute
// only.
func TestSendSpanMessagingSystem(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0])
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "k")
	require.NoError(t, e.pub.Publish("plain", msg))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	runForwarder(t, e.store, newRecorder(), forwarder.Config{TracerProvider: tp, Topics: []string{"plain"}})
	a := attrs(spanNamed(t, exp, "send plain").Attributes)
	require.Equal(t, forwarder.DefaultMessagingSystem, a["messaging.system"].AsString())
	require.NotContains(t, a, attribute.Key("messaging.kafka.message.key"))

	msg = message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "k")
	require.NoError(t, e.pub.Publish("named", msg))
	exp2 := tracetest.NewInMemoryExporter()
	tp2 := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp2))
	t.Cleanup(func() { _ = tp2.Shutdown(context.Background()) })
	runForwarder(t, e.store, newRecorder(), forwarder.Config{TracerProvider: tp2, MessagingSystem: "kafka", Topics: []string{"named"}})
	a = attrs(spanNamed(t, exp2, "send named").Attributes)
	require.Equal(t, "kafka", a["messaging.system"].AsString())
	require.Equal(t, "k", a["messaging.kafka.message.key"].AsString())
}
