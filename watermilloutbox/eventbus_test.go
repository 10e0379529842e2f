package watermilloutbox_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Integration events: they go through the outbox.

type ebOrderPlaced struct {
	OrderID string `json:"order_id"`
	Total   int    `json:"total"`
}

func (ebOrderPlaced) IntegrationEvent()      {}
func (e ebOrderPlaced) PartitionKey() string { return e.OrderID }

// ebOrderShipped is an integration event by its pointer receiver.
type ebOrderShipped struct {
	OrderID string `json:"order_id"`
}

func (*ebOrderShipped) IntegrationEvent() {}

// Domain events: dispatched in-process.

type ebStockReserved struct{ SKU string }

type ebAuditNoted struct{ Note string }

// ebDupe shares the name "ebStockReserved" through a custom GenerateName.
type ebDupe struct{}

type ebRow struct {
	UUID, Topic string
	Key         sql.NullString
	Payload     []byte
	Metadata    message.Metadata
}

// ebOutbox gives a test its own migrated table and a Publisher on it.
func ebOutbox(t *testing.T) (*sql.DB, *outbox.Publisher, string) {
	t.Helper()
	return pgOutbox(t, outbox.PublisherConfig{})
}

func ebRows(t *testing.T, db *sql.DB, table string) []ebRow {
	t.Helper()
	rows, err := db.Query(`SELECT uuid, topic, partition_key, payload, metadata FROM ` + table + ` ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []ebRow
	for rows.Next() {
		var r ebRow
		var md []byte
		require.NoError(t, rows.Scan(&r.UUID, &r.Topic, &r.Key, &r.Payload, &md))
		require.NoError(t, json.Unmarshal(md, &r.Metadata))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func ebBegin(t *testing.T, db *sql.DB) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(context.Background(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

func ebBus(t *testing.T, pub message.Publisher, cfg outbox.EventBusConfig) *outbox.EventBus {
	t.Helper()
	bus, err := outbox.NewEventBus(pub, cfg, nil)
	require.NoError(t, err)
	return bus
}

const (
	ebTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	ebSpanID      = "00f067aa0ba902b7"
	ebTraceparent = "00-" + ebTraceID + "-" + ebSpanID + "-01"
)

// ebSpanContext returns ctx with a valid, sampled remote span context.
func ebSpanContext(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	traceID, err := trace.TraceIDFromHex(ebTraceID)
	require.NoError(t, err)
	spanID, err := trace.SpanIDFromHex(ebSpanID)
	require.NoError(t, err)
	state, err := trace.ParseTraceState("vendor=abc")
	require.NoError(t, err)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    traceID,
		SpanID:     spanID,
		TraceFlags: trace.FlagsSampled,
		TraceState: state,
		Remote:     true,
	})
	require.True(t, sc.IsValid())
	return trace.ContextWithSpanContext(ctx, sc)
}

// ebRecorder is a message.Publisher recording each Publish call, then
// passing it on to next, if any.
type ebRecorder struct {
	next  message.Publisher
	mu    sync.Mutex
	calls []ebCall
}

type ebCall struct {
	topic string
	msgs  []*message.Message
}

func (r *ebRecorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	r.calls = append(r.calls, ebCall{topic: topic, msgs: msgs})
	r.mu.Unlock()
	if r.next != nil {
		return r.next.Publish(topic, msgs...)
	}
	return nil
}

func (r *ebRecorder) Close() error { return nil }

func (r *ebRecorder) recorded() []ebCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ebCall(nil), r.calls...)
}

func TestEventBusIntegrationEventCommitted(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{})
	ctx := ebSpanContext(t, context.Background())

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(ctx, tx, ebOrderPlaced{OrderID: "order-1", Total: 1999}))
	require.Empty(t, ebRows(t, db, table), "invisible before commit")
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 1)
	r := rows[0]
	_, err := uuid.Parse(r.UUID)
	require.NoError(t, err, "the marshaler's UUID")
	require.Equal(t, "ebOrderPlaced", r.Topic, "default topic: the event name")
	require.JSONEq(t, `{"order_id":"order-1","total":1999}`, string(r.Payload))
	require.Equal(t, sql.NullString{String: "order-1", Valid: true}, r.Key)
	require.Equal(t, message.Metadata{
		outbox.EventNameMetadataKey:    "ebOrderPlaced",
		outbox.PartitionKeyMetadataKey: "order-1",
		"traceparent":                  ebTraceparent,
		"tracestate":                   "vendor=abc",
	}, r.Metadata)
}

func TestEventBusIntegrationEventRolledBack(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{})

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(context.Background(), tx,
		ebOrderPlaced{OrderID: "order-1"}, &ebOrderShipped{OrderID: "order-1"}))
	require.NoError(t, tx.Rollback())

	require.Empty(t, ebRows(t, db, table))
}

func TestEventBusWithoutSpanWritesNoTraceContext(t *testing.T) {
	t.Parallel()
	rec := &ebRecorder{}
	bus := ebBus(t, rec, outbox.EventBusConfig{})

	require.NoError(t, bus.Publish(context.Background(), ebOrderPlaced{OrderID: "o"}))

	calls := rec.recorded()
	require.Len(t, calls, 1)
	require.NotContains(t, calls[0].msgs[0].Metadata, "traceparent")
	require.NotContains(t, calls[0].msgs[0].Metadata, "tracestate")
}

func TestEventBusDomainEventRunsInCallersTx(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{})

	type ctxKey struct{}
	ctx := context.WithValue(context.Background(), ctxKey{}, "request-7")
	tx := ebBegin(t, db)

	var order []string
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("reserve",
		func(ctx context.Context, e *ebStockReserved) error {
			got, ok := outbox.TxFromContext(ctx)
			require.True(t, ok, "handler sees the transaction")
			require.Same(t, tx, got)
			require.Equal(t, "request-7", ctx.Value(ctxKey{}), "handler gets the caller's ctx")
			require.Equal(t, "sku-1", e.SKU)
			// A handler writes through the caller's transaction.
			var one int
			require.NoError(t, got.QueryRowContext(ctx, `SELECT 1`).Scan(&one))
			order = append(order, "reserve")
			return nil
		})))
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("notify",
		func(ctx context.Context, e *ebStockReserved) error {
			order = append(order, "notify")
			return nil
		})))

	require.NoError(t, bus.PublishTx(ctx, tx, ebStockReserved{SKU: "sku-1"}))
	require.Equal(t, []string{"reserve", "notify"}, order, "registration order")
	require.NoError(t, tx.Commit())
	require.Empty(t, ebRows(t, db, table), "domain events are never stored")
}

func TestEventBusStripsAuthorization(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{
		Marshaler: cqrs.CommandEventMarshalerDecorator{
			CommandEventMarshaler: cqrs.JSONMarshaler{GenerateName: cqrs.StructName},
			DecorateFunc: func(_ any, msg *message.Message) error {
				msg.Metadata.Set("Authorization", "Bearer secret")
				msg.Metadata.Set("AUTHORIZATION", "Bearer secret")
				msg.Metadata.Set("x-other", "kept")
				return nil
			},
		},
	})

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(context.Background(), tx, ebOrderPlaced{OrderID: "o"}))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 1)
	require.Equal(t, "kept", rows[0].Metadata.Get("x-other"))
	require.Equal(t, "ebOrderPlaced", rows[0].Metadata.Get(outbox.EventNameMetadataKey))
	for k := range rows[0].Metadata {
		require.NotEqual(t, "authorization", strings.ToLower(k), "stored %q", k)
	}
}

func TestEventBusGenerateTopicAndPartitionKey(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{
		GenerateTopic: func(eventName string, event any) (string, error) {
			if _, ok := event.(*ebOrderShipped); ok {
				return "shipping." + eventName, nil
			}
			return "orders." + eventName, nil
		},
	})

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(context.Background(), tx,
		ebOrderPlaced{OrderID: "order-9"},
		&ebOrderShipped{OrderID: "order-9"},
	))
	require.NoError(t, tx.Commit())

	rows := ebRows(t, db, table)
	require.Len(t, rows, 2)
	require.Equal(t, "orders.ebOrderPlaced", rows[0].Topic)
	require.Equal(t, sql.NullString{String: "order-9", Valid: true}, rows[0].Key)
	require.Equal(t, "shipping.ebOrderShipped", rows[1].Topic)
	require.False(t, rows[1].Key.Valid, "no PartitionKey: no key")
	require.Equal(t, "ebOrderShipped", rows[1].Metadata.Get(outbox.EventNameMetadataKey))
}

func TestEventBusGenerateTopicError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	rec := &ebRecorder{}
	bus := ebBus(t, rec, outbox.EventBusConfig{
		GenerateTopic: func(string, any) (string, error) { return "", boom },
	})
	require.ErrorIs(t, bus.Publish(context.Background(), ebOrderPlaced{}), boom)

	bus = ebBus(t, rec, outbox.EventBusConfig{
		GenerateTopic: func(string, any) (string, error) { return "bad topic", nil },
	})
	require.ErrorIs(t, bus.Publish(context.Background(), ebOrderPlaced{}), outbox.ErrInvalidTopic)
	require.Empty(t, rec.recorded())
}

func TestEventBusOnePublishPerTopicInOrder(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	rec := &ebRecorder{next: pub}
	bus := ebBus(t, rec, outbox.EventBusConfig{})

	var handled []string
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("h",
		func(_ context.Context, e *ebStockReserved) error {
			handled = append(handled, e.SKU)
			return nil
		})))

	tx := ebBegin(t, db)
	require.NoError(t, bus.PublishTx(context.Background(), tx,
		ebOrderPlaced{OrderID: "a1"},
		&ebOrderShipped{OrderID: "b1"},
		ebStockReserved{SKU: "s1"},
		ebOrderPlaced{OrderID: "a2"},
		ebOrderShipped{OrderID: "b2"}, // a value: still an integration event
		ebOrderPlaced{OrderID: "a3"},
	))
	require.NoError(t, tx.Commit())

	calls := rec.recorded()
	require.Len(t, calls, 2, "one Publish (one INSERT) per topic")
	require.Equal(t, "ebOrderPlaced", calls[0].topic)
	require.Len(t, calls[0].msgs, 3)
	require.Equal(t, "ebOrderShipped", calls[1].topic)
	require.Len(t, calls[1].msgs, 2)
	require.Equal(t, []string{"s1"}, handled)

	var ids []string
	for _, r := range ebRows(t, db, table) {
		var p struct {
			OrderID string `json:"order_id"`
		}
		require.NoError(t, json.Unmarshal(r.Payload, &p))
		ids = append(ids, p.OrderID)
	}
	require.Equal(t, []string{"a1", "a2", "a3", "b1", "b2"}, ids)
}

func TestEventBusNoTransaction(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus := ebBus(t, pub, outbox.EventBusConfig{})

	err := bus.Publish(context.Background(), ebOrderPlaced{OrderID: "o"})
	require.ErrorIs(t, err, outbox.ErrNoTransaction)

	err = bus.PublishTx(context.Background(), nil, ebOrderPlaced{OrderID: "o"})
	require.ErrorIs(t, err, outbox.ErrNoTransaction)

	require.Empty(t, ebRows(t, db, table))
}

func TestEventBusHandlerErrorIsWrappedAndStops(t *testing.T) {
	t.Parallel()
	rec := &ebRecorder{}
	bus := ebBus(t, rec, outbox.EventBusConfig{})
	boom := errors.New("boom")
	var calls []string
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("first",
		func(context.Context, *ebStockReserved) error { calls = append(calls, "first"); return boom })))
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("second",
		func(context.Context, *ebStockReserved) error { calls = append(calls, "second"); return nil })))

	err := bus.Publish(context.Background(), &ebStockReserved{SKU: "x"})
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "handler first")
	require.Equal(t, []string{"first"}, calls)
}

func TestEventBusDomainEventShapes(t *testing.T) {
	t.Parallel()
	rec := &ebRecorder{}
	bus := ebBus(t, rec, outbox.EventBusConfig{})

	var got []any
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("ptr",
		func(_ context.Context, e *ebStockReserved) error { got = append(got, *e); return nil })))
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("other",
		func(_ context.Context, e *ebAuditNoted) error { got = append(got, *e); return nil })))

	// Value and pointer events both reach a *T handler.
	require.NoError(t, bus.Publish(context.Background(),
		ebStockReserved{SKU: "v"}, &ebStockReserved{SKU: "p"}, ebAuditNoted{Note: "n"}))
	require.Equal(t, []any{ebStockReserved{SKU: "v"}, ebStockReserved{SKU: "p"}, ebAuditNoted{Note: "n"}}, got)
	require.Empty(t, rec.recorded())

	require.NoError(t, bus.Publish(context.Background()), "no events")
	require.Error(t, bus.Publish(context.Background(), nil))
	require.Error(t, bus.Publish(context.Background(), (*ebStockReserved)(nil)))
}

func TestEventBusDomainEventNameClash(t *testing.T) {
	t.Parallel()
	rec := &ebRecorder{}
	name := func(v any) string {
		if _, ok := v.(*ebDupe); ok {
			return "ebStockReserved"
		}
		return cqrs.StructName(v)
	}
	bus := ebBus(t, rec, outbox.EventBusConfig{Marshaler: cqrs.JSONMarshaler{GenerateName: name}})
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("h",
		func(context.Context, *ebStockReserved) error { return nil })))

	// Same name, other type: an error, not a panic in the handler.
	err := bus.Publish(context.Background(), &ebDupe{})
	require.ErrorContains(t, err, "handler h takes")
}

func TestEventBusAddDomainHandlerRejects(t *testing.T) {
	t.Parallel()
	bus := ebBus(t, &ebRecorder{}, outbox.EventBusConfig{})

	require.Error(t, bus.AddDomainHandler(nil))
	require.ErrorContains(t, bus.AddDomainHandler(cqrs.NewEventHandler("placed",
		func(context.Context, *ebOrderPlaced) error { return nil })), "IntegrationEvent")
	require.ErrorContains(t, bus.AddDomainHandler(cqrs.NewEventHandler("shipped",
		func(context.Context, *ebOrderShipped) error { return nil })), "IntegrationEvent")
}

func TestNewEventBusInvalid(t *testing.T) {
	t.Parallel()
	_, err := outbox.NewEventBus(nil, outbox.EventBusConfig{}, nil)
	require.Error(t, err)
	_, err = outbox.NewEventBus((*outbox.Publisher)(nil), outbox.EventBusConfig{}, nil)
	require.Error(t, err)

	_, err = outbox.NewEventBus(&ebRecorder{}, outbox.EventBusConfig{Marshaler: (*cqrs.JSONMarshaler)(nil)}, nil)
	require.ErrorContains(t, err, "invalid config: Marshaler")

	require.NoError(t, outbox.EventBusConfig{}.Validate(), "zero config: all defaults")
}

// TestEventBusUnhandledEventIsAnError: an event that is neither an
// integration event nor has a domain handler would go nowhere. Publish says
// so (ErrUnhandledEvent), before anything is written or handled.
func TestEventBusUnhandledEventIsAnError(t *testing.T) {
	t.Parallel()
	db, pub, table := ebOutbox(t)
	bus, err := outbox.NewEventBus(pub, outbox.EventBusConfig{}, nil)
	require.NoError(t, err)
	var handled int
	require.NoError(t, bus.AddDomainHandler(cqrs.NewEventHandler("stock",
		func(context.Context, *ebStockReserved) error { handled++; return nil })))

	tx := begin(t, db)
	err = bus.PublishTx(context.Background(), tx, ebOrderPlaced{OrderID: "o-1"}, &ebStockReserved{SKU: "x"}, struct{ X int }{1})
	require.ErrorIs(t, err, outbox.ErrUnhandledEvent)
	require.ErrorContains(t, err, "struct { X int }")
	require.NoError(t, tx.Commit())
	require.Zero(t, handled, "no handler ran")
	require.Empty(t, ebRows(t, db, table), "nothing written")
}
