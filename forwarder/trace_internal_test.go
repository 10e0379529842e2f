package forwarder

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// configStore is a Store of which NewForwarder reads only the config.
type configStore struct{ relaystore.Store }

func (configStore) Config() config.Config { return config.Config{} }

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }

// relayedMessage is a message as the subscriber emits it, its context
// carrying its row.
func relayedMessage() *message.Message {
	row := &relaystore.Row{ID: 1, UUID: "0c1f", Topic: "orders", CreatedAt: time.Now()}
	msg := message.NewMessage(row.UUID, []byte(`{"order":1}`))
	msg.Metadata.Set(outbox.TopicMetadataKey, row.Topic)
	msg.Metadata.Set(outbox.PartitionKeyMetadataKey, "order-1")
	msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	msg.SetContext(&rowCtx{Context: context.Background(), row: row})
	return msg
}

func newTestForwarder(t *testing.T, cfg Config) *Forwarder {
	t.Helper()
	f, err := NewForwarder(configStore{}, discard{}, cfg, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// Without an Observer, and with no tracer that records (the global
// provider while no SDK is installed, or a noop one), the relay's publish
// allocates nothing beyond what it did before spans and metrics existed.
func TestPublishWithoutObserverOrRecordingTracerAllocatesNothingMore(t *testing.T) {
	msg := relayedMessage()
	allocs := func(f *Forwarder) float64 {
		return testing.AllocsPerRun(500, func() {
			_, err := f.publish(msg)
			require.NoError(t, err)
		})
	}
	bare := newTestForwarder(t, Config{HandlerName: "bare"})
	bare.tracing = tracing{} // no tracer at all: the relay as it was
	base := allocs(bare)

	for name, tp := range map[string]trace.TracerProvider{
		"global provider, no SDK installed": nil,
		"noop provider":                     noop.NewTracerProvider(),
	} {
		f := newTestForwarder(t, Config{HandlerName: name, TracerProvider: tp})
		require.Equal(t, base, allocs(f), name)
	}

	// An SDK that samples nothing: the span is started, nothing else done.
	exp := tracetest.NewInMemoryExporter()
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithSyncer(exp))
	f := newTestForwarder(t, Config{HandlerName: "never", TracerProvider: never})
	require.LessOrEqual(t, allocs(f), base+4, "a span not recorded costs its start only")
	require.Empty(t, exp.GetSpans())
}

func BenchmarkPublish(b *testing.B) {
	exp := tracetest.NewInMemoryExporter()
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"no tracer", Config{TracerProvider: noop.NewTracerProvider()}},
		{"global provider unset", Config{}},
		{"sdk never sampling", Config{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))}},
		{"sdk recording", Config{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))}},
		{"observer", Config{TracerProvider: noop.NewTracerProvider(), Observer: observe.NopObserver{}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f, err := NewForwarder(configStore{}, discard{}, bc.cfg, nil)
			require.NoError(b, err)
			defer f.Close()
			msg := relayedMessage()
			b.ReportAllocs()
			for b.Loop() {
				_, _ = f.publish(msg)
			}
			exp.Reset()
		})
	}
}
