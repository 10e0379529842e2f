package forwarder

import (
	"context"
	"reflect"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/e0a82c8c/watermill-outbox/internal/relayretry"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// tracerName is the instrumentation scope of the forwarder's spans.
const tracerName = "github.com/e0a82c8c/watermill-outbox/forwarder"

// messagingSystemer is implemented by destinations that name their
// messaging system: sink.KafkaPublisher ("kafka"), sink.AMQPPublisher
// ("rabbitmq").
type messagingSystemer interface {
	MessagingSystem() string
}

// sendSpan is the start option of every send span; one value, so starting
// a span allocates no option.
var sendSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}

// tracing makes the send spans of one forwarder.
type tracing struct {
	tracer trace.Tracer // nil: spans are off (a noop provider)
	// unset is the global provider as it was before any SDK was installed,
	// when the forwarder took the default then. Its tracer delegates to an
	// SDK installed later; until then otel.GetTracerProvider() still
	// returns it, and no span is started at all: the global no-op tracer
	// allocates for each span it does not record.
	unset    trace.TracerProvider
	system   attribute.KeyValue
	kafka    bool
	classify retry.Classifier
}

func newTracing(tp trace.TracerProvider, dest message.Publisher, system string, classify retry.Classifier) tracing {
	t := tracing{classify: classify}
	if system == "" {
		system = DefaultMessagingSystem
		if s, ok := dest.(messagingSystemer); ok && s.MessagingSystem() != "" {
			system = s.MessagingSystem()
		}
	}
	t.system, t.kafka = semconv.MessagingSystemKey.String(system), system == "kafka"
	if tp == nil {
		tp = otel.GetTracerProvider()
		if isUnsetGlobal(tp) {
			t.unset = tp
		}
	}
	switch tp.(type) {
	case noop.TracerProvider, *noop.TracerProvider:
		return t
	}
	t.tracer = tp.Tracer(tracerName, trace.WithSchemaURL(semconv.SchemaURL))
	return t
}

// isUnsetGlobal reports whether tp is the global provider's stand-in that
// otel.GetTracerProvider returns until otel.SetTracerProvider is called.
func isUnsetGlobal(tp trace.TracerProvider) bool {
	t := reflect.TypeOf(tp)
	return t != nil && t.Kind() == reflect.Pointer && t.Elem().PkgPath() == "go.opentelemetry.io/otel/internal/global"
}

// on reports whether send spans may be recorded at all.
func (t *tracing) on() bool {
	if t.tracer == nil {
		return false
	}
	return t.unset == nil || otel.GetTracerProvider() != t.unset
}

// publish runs send, the publish of out (msg's copy for the destination)
// to topic, in a send span when spans are on. The span follows the OTel
// messaging conventions and is linked to the trace context stored with the
// row (W3C traceparent and tracestate in its metadata), not a child of it:
// the relay's publish is not part of the request that wrote the row. That
// stored context goes to the broker unchanged in out's metadata; the span
// is not put into out's context, so a propagating decorator of the
// destination finds no span there to overwrite it with.
func (t *tracing) publish(msg, out *message.Message, topic string, send func() error) error {
	if !t.on() {
		return send()
	}
	return t.publishInSpan(msg, out, topic, send)
}

// publishInSpan is publish with spans on. It is apart so that publish, on
// the stack of every message's goroutine, keeps a small frame when they
// are off (see relayretry's Middleware.attempt).
func (t *tracing) publishInSpan(msg, out *message.Message, topic string, send func() error) error {
	_, span := t.tracer.Start(msg.Context(), "send "+topic, sendSpan...)
	defer span.End()
	if !span.IsRecording() {
		return send()
	}
	attrs := []attribute.KeyValue{
		t.system,
		semconv.MessagingDestinationName(topic),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("send"),
		semconv.MessagingMessageID(msg.UUID),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	}
	if key := msg.Metadata.Get(outbox.PartitionKeyMetadataKey); key != "" && t.kafka {
		attrs = append(attrs, semconv.MessagingKafkaMessageKey(key))
	}
	span.SetAttributes(attrs...)
	if stored := storedSpanContext(out.Metadata); stored.IsValid() {
		span.AddLink(trace.Link{SpanContext: stored})
	}
	err := send()
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(t.kind(err).String()))
	}
	return err
}

// kind classifies a publish error for the span's error.type, as the
// forwarder's retry middleware will.
func (t *tracing) kind(err error) retry.Kind { return relayretry.Classify(t.classify, err) }

// storedSpanContext reads the W3C trace context written with the row.
func storedSpanContext(md message.Metadata) trace.SpanContext {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(md))
	return trace.SpanContextFromContext(ctx)
}
