package inbox_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// The consumer's span says whether the delivery was a duplicate.
func TestSpanSaysDuplicate(t *testing.T) {
	in, err := inbox.New(testenv.SQLite(t), inbox.Config{Consumer: "ledger", Dialect: outbox.SQLite}, nil)
	require.NoError(t, err)
	require.NoError(t, in.Migrate(context.Background()))
	rec := tracetest.NewSpanRecorder()
	tracer := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)).Tracer("test")

	for range 2 {
		ctx, span := tracer.Start(context.Background(), "consume")
		msg := message.NewMessage("m1", nil)
		msg.SetContext(ctx)
		_, err := in.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })(msg)
		require.NoError(t, err)
		span.End()
	}
	spans := rec.Ended()
	require.Len(t, spans, 2)
	for i, want := range []bool{false, true} {
		var got []bool
		for _, a := range spans[i].Attributes() {
			if a.Key == inbox.DuplicateAttribute {
				got = append(got, a.Value.AsBool())
			}
		}
		require.Equal(t, []bool{want}, got, "span %d", i)
	}
}
