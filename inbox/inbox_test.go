package inbox_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/inbox"
)

// deliver runs msg (a fresh copy of it: a broker redelivers a new
// message.Message) through in's middleware around h.
func deliver(in *inbox.Inbox, uuid string, h message.HandlerFunc) error {
	msg := message.NewMessage(uuid, []byte("payload"))
	out, err := in.Middleware(h)(msg)
	if len(out) > 0 {
		return errors.New("the middleware returned messages")
	}
	return err
}

func TestDuplicateIsAckedWithoutRunningTheHandler(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		in := e.inbox(t, inbox.Config{})
		fx := e.effects(t)
		var calls atomic.Int32
		h := func(msg *message.Message) ([]*message.Message, error) {
			calls.Add(1)
			return nil, fx.apply(msg.Context(), msg.UUID)
		}
		uuid := watermill.NewUUID()
		require.NoError(t, deliver(in, uuid, h))
		require.NoError(t, deliver(in, uuid, h), "a duplicate is acked")
		require.EqualValues(t, 1, calls.Load(), "the handler ran for the duplicate")
		require.Equal(t, 1, fx.of(t, uuid))

		// Another consumer of the same message applies it too.
		other, err := inboxLike(e, in, "shipping")
		require.NoError(t, err)
		require.NoError(t, deliver(other, uuid, h))
		require.EqualValues(t, 2, calls.Load())
	})
}

// inboxLike returns an inbox on in's table for another consumer.
func inboxLike(e *env, in *inbox.Inbox, consumer string) (*inbox.Inbox, error) {
	cfg := in.Config()
	cfg.Consumer = consumer
	if e.pool != nil {
		return inbox.NewPgx(e.pool, cfg, nil)
	}
	return inbox.New(e.sqlDB, cfg, nil)
}

func TestFailingHandlerLeavesNeitherRecordNorWrites(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		in := e.inbox(t, inbox.Config{})
		fx := e.effects(t)
		boom := errors.New("boom")
		uuid := watermill.NewUUID()
		err := deliver(in, uuid, func(msg *message.Message) ([]*message.Message, error) {
			require.NoError(t, fx.apply(msg.Context(), msg.UUID))
			return nil, boom
		})
		require.ErrorIs(t, err, boom, "the handler's error is returned: the router nacks")
		require.Equal(t, 0, fx.of(t, uuid), "the failed handler's write was kept")
		require.Equal(t, 0, e.records(t, in.Config().Table, uuid), "the failed delivery was recorded")

		// A panic rolls back too.
		require.Panics(t, func() {
			_ = deliver(in, uuid, func(msg *message.Message) ([]*message.Message, error) {
				require.NoError(t, fx.apply(msg.Context(), msg.UUID))
				panic("handler panic")
			})
		})
		require.Equal(t, 0, fx.of(t, uuid))
		require.Equal(t, 0, e.records(t, in.Config().Table, uuid))

		// The redelivery runs the handler again.
		require.NoError(t, deliver(in, uuid, func(msg *message.Message) ([]*message.Message, error) {
			return nil, fx.apply(msg.Context(), msg.UUID)
		}))
		require.Equal(t, 1, fx.of(t, uuid))
		require.Equal(t, 1, e.records(t, in.Config().Table, uuid))
	})
}

func TestConcurrentDeliveriesApplyOnce(t *testing.T) {
	for _, firstFails := range []bool{false, true} {
		name := "first commits"
		if firstFails {
			name = "first fails"
		}
		t.Run(name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, e *env) {
				in := e.inbox(t, inbox.Config{})
				fx := e.effects(t)
				uuid := watermill.NewUUID()
				entered, release := make(chan struct{}), make(chan struct{})
				var released sync.Once
				unblock := func() { released.Do(func() { close(release) }) }
				t.Cleanup(unblock) // before the tables are dropped, should the test fail
				var calls atomic.Int32
				boom := errors.New("boom")
				h := func(msg *message.Message) ([]*message.Message, error) {
					if err := fx.apply(msg.Context(), msg.UUID); err != nil {
						return nil, err
					}
					if calls.Add(1) == 1 { // the first holds its record until released
						close(entered)
						<-release
						if firstFails {
							return nil, boom
						}
					}
					return nil, nil
				}
				first, second := make(chan error, 1), make(chan error, 1)
				go func() { first <- deliver(in, uuid, h) }()
				waitFor(t, entered, "the first delivery's handler")
				base := e.lockWaiters(t, in.Config().Table)
				go func() { second <- deliver(in, uuid, h) }()
				require.Eventually(t, func() bool { return e.lockWaiters(t, in.Config().Table) > base }, 10*time.Second, 200*time.Millisecond,
					"the second delivery does not wait for the first")
				unblock()

				errFirst, errSecond := receive(t, first), receive(t, second)
				if firstFails {
					require.ErrorIs(t, errFirst, boom)
					require.EqualValues(t, 2, calls.Load(), "the second delivery did not apply the message the first rolled back")
				} else {
					require.NoError(t, errFirst)
					require.EqualValues(t, 1, calls.Load(), "both deliveries ran the handler")
				}
				require.NoError(t, errSecond)
				require.Equal(t, 1, fx.of(t, uuid), "effects applied")
				require.Equal(t, 1, e.records(t, in.Config().Table, uuid))
			})
		})
	}
}

func TestPurgeDeletesRecordsPastTheWindow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		in := e.inbox(t, inbox.Config{PurgeBatchSize: 2}) // several batches
		fx := e.effects(t)
		h := func(msg *message.Message) ([]*message.Message, error) {
			return nil, fx.apply(msg.Context(), msg.UUID)
		}
		ctx := context.Background()
		var old []string
		for range 5 {
			uuid := watermill.NewUUID()
			old = append(old, uuid)
			require.NoError(t, deliver(in, uuid, h))
		}
		table := in.Config().Table
		e.backdate(t, table, 8) // past the default week
		fresh := watermill.NewUUID()
		require.NoError(t, deliver(in, fresh, h))
		other, err := inboxLike(e, in, "shipping")
		require.NoError(t, err)
		require.NoError(t, deliver(other, old[0], h)) // fresh, and another consumer's

		st, err := in.Stats(ctx)
		require.NoError(t, err)
		require.Len(t, st, 2)
		require.Equal(t, "billing", st[0].Consumer)
		require.EqualValues(t, 6, st[0].Records)
		require.Greater(t, st[0].Oldest, 7*24*time.Hour)
		require.EqualValues(t, 1, st[1].Records)

		n, err := in.Purge(ctx)
		require.NoError(t, err)
		require.Equal(t, 5, n)
		require.Equal(t, 1, e.records(t, table, fresh), "a record within the window was purged")
		require.Equal(t, 1, e.records(t, table, old[0]), "another consumer's record was purged")

		// Past the window, a redelivery is applied again, as documented;
		// within it, it is still a duplicate.
		require.NoError(t, deliver(in, old[1], h))
		require.Equal(t, 2, fx.of(t, old[1]))
		require.NoError(t, deliver(in, fresh, h))
		require.Equal(t, 1, fx.of(t, fresh))
	})
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func receive(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for a delivery")
		return nil
	}
}
