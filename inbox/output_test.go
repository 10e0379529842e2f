package inbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// outcomes is an Observer that hands every delivery's outcome to a channel.
type outcomes chan inbox.DeliveryEvent

func (o outcomes) ObserveDelivery(e inbox.DeliveryEvent) { o <- e }

func (o outcomes) next(t *testing.T) inbox.DeliveryEvent {
	t.Helper()
	select {
	case e := <-o:
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for a delivery")
		return inbox.DeliveryEvent{}
	}
}

// What a handler returns goes into the consumer's outbox in its
// transaction: once for a duplicate, never for a failed attempt.
func TestReturnedMessagesGoToTheOutboxInTheTransaction(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		store := e.store(t)
		pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
		require.NoError(t, err)
		seen := make(outcomes, 10)
		in := e.inbox(t, inbox.Config{Outbox: pub, Observer: seen})
		fx := e.effects(t)

		logger := watermill.NopLogger{}
		broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10}, logger)
		router, err := message.NewRouter(message.RouterConfig{}, logger)
		require.NoError(t, err)
		router.AddMiddleware(in.Middleware)
		failOnce := true
		router.AddHandler("billing", "orders", broker, "invoices", pub, func(msg *message.Message) ([]*message.Message, error) {
			if err := fx.apply(msg.Context(), msg.UUID); err != nil {
				return nil, err
			}
			out := []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("invoice"))}
			if string(msg.Payload) == "fail once" && failOnce {
				failOnce = false
				return out, errors.New("boom")
			}
			return out, nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- router.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			<-done
		})
		<-router.Running()

		uuid := watermill.NewUUID()
		require.NoError(t, broker.Publish("orders", message.NewMessage(uuid, []byte("ok"))))
		require.Equal(t, inbox.Handled, seen.next(t).Outcome)
		require.NoError(t, broker.Publish("orders", message.NewMessage(uuid, []byte("ok"))))
		ev := seen.next(t)
		require.Equal(t, inbox.Duplicate, ev.Outcome)
		require.Equal(t, "billing", ev.Handler)

		flaky := watermill.NewUUID()
		require.NoError(t, broker.Publish("orders", message.NewMessage(flaky, []byte("fail once"))))
		require.Equal(t, inbox.Failed, seen.next(t).Outcome)
		require.Equal(t, inbox.Handled, seen.next(t).Outcome) // the nacked message, redelivered

		require.Equal(t, 1, fx.of(t, uuid))
		require.Equal(t, 1, fx.of(t, flaky))
		st, err := store.Stats(context.Background())
		require.NoError(t, err)
		require.Len(t, st.Topics, 1)
		require.Equal(t, "invoices", st.Topics[0].Topic)
		require.Equal(t, 2, st.Topics[0].Pending, "one invoice per order in the outbox")
	})
}

func TestReturnedMessagesWithoutOutboxFail(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		in := e.inbox(t, inbox.Config{})
		fx := e.effects(t)
		uuid := watermill.NewUUID()
		err := deliver(in, uuid, func(msg *message.Message) ([]*message.Message, error) {
			require.NoError(t, fx.apply(msg.Context(), msg.UUID))
			return []*message.Message{message.NewMessage(watermill.NewUUID(), nil)}, nil
		})
		require.ErrorIs(t, err, inbox.ErrOutputWithoutOutbox)
		require.Equal(t, 0, fx.of(t, uuid))
		require.Equal(t, 0, e.records(t, in.Config().Table, uuid))
	})
}

func TestConfigValidation(t *testing.T) {
	db := sqliteForConfig(t)
	for name, cfg := range map[string]inbox.Config{
		"no consumer":   {Dialect: outbox.SQLite},
		"no dialect":    {Consumer: "c"},
		"bad table":     {Consumer: "c", Dialect: outbox.SQLite, Table: "x; DROP TABLE y"},
		"short window":  {Consumer: "c", Dialect: outbox.SQLite, Retention: time.Second},
		"negative size": {Consumer: "c", Dialect: outbox.SQLite, PurgeBatchSize: -1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := inbox.New(db, cfg, nil)
			require.Error(t, err)
		})
	}
	_, err := inbox.New(db, inbox.Config{Consumer: "c", Dialect: outbox.SQLite, Table: "x; DROP TABLE y"}, nil)
	require.ErrorIs(t, err, outbox.ErrInvalidTableName)
	in, err := inbox.New(db, inbox.Config{Consumer: "c", Dialect: outbox.SQLite}, nil)
	require.NoError(t, err)
	require.Equal(t, inbox.DefaultRetention, in.Config().Retention)
	require.Equal(t, inbox.DefaultTable, in.Config().Table)
	_, err = inbox.NewPgx(nil, inbox.Config{Consumer: "c"}, nil)
	require.Error(t, err)
}
