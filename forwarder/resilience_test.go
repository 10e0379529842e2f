package forwarder_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// flakyStore fails the first claims and ack writes, as a database that is
// briefly unreachable would.
type flakyStore struct {
	relaystore.Store
	claimFailures, ackFailures atomic.Int32
}

var errDatabaseDown = errors.New("connection refused")

func (s *flakyStore) Claim(ctx context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	if s.claimFailures.Add(-1) >= 0 {
		return relaystore.Claimed{}, errDatabaseDown
	}
	return s.Store.Claim(ctx, req)
}

func (s *flakyStore) MarkPublished(ctx context.Context, token string, ids []int64, keep bool) (int, error) {
	if s.ackFailures.Add(-1) >= 0 {
		return 0, errDatabaseDown
	}
	return s.Store.MarkPublished(ctx, token, ids, keep)
}

// TestDatabaseErrorsNeverEndTheRelay: failed claims and failed ack writes are
// retried; everything is delivered and recorded.
func TestDatabaseErrorsNeverEndTheRelay(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		store := &flakyStore{Store: e.store}
		store.claimFailures.Store(3)
		store.ackFailures.Store(3)
		e.publish(t, "t", 50, nil)
		dest := newRecorder()
		f, err := forwarder.NewForwarder(store, dest, forwarder.Config{}, nil)
		require.NoError(t, err)
		go func() { _ = f.Run(context.Background()) }()
		t.Cleanup(func() { _ = f.Close() })
		dest.waitDistinct(t, 50, 60*time.Second)
		waitFor(t, 30*time.Second, "acks recorded despite failed writes", func() bool { return e.count(t, "1=1") == 0 })
		require.Less(t, store.claimFailures.Load(), int32(0), "claims failed and were retried")
		require.Less(t, store.ackFailures.Load(), int32(0), "ack writes failed and were retried")
	})
}

// TestLeaseRenewedWhileInFlight: a publish that takes longer than the lease
// keeps its claim (renewed from half the lease on), so a second relay does not
// take the row over and publish it too.
func TestLeaseRenewedWhileInFlight(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		cfg := fastConfig()
		// Two seconds: renewals (every half second) must keep up even on a
		// loaded machine with SQLite under the race detector.
		cfg.ClaimTimeout = 2 * time.Second
		slow := newRecorder()
		entered := make(chan struct{})
		release := make(chan struct{})
		slow.setFail(func(string, *message.Message) error {
			close(entered)
			<-release
			return nil
		})
		msgs := e.publish(t, "t", 1, nil)
		runForwarder(t, e.with(t, cfg), slow, forwarder.Config{})
		<-entered

		other := newRecorder()
		runForwarder(t, e.with(t, cfg), other, forwarder.Config{})
		// Hold the publish for two leases while the other relay polls.
		deadline := time.After(2 * cfg.ClaimTimeout)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
	hold:
		for {
			select {
			case <-deadline:
				break hold
			case <-tick.C:
				r, ok := e.row(t, msgs[0].UUID)
				require.True(t, ok)
				require.True(t, r.Claimed, "the claim stays held")
			}
		}
		close(release)
		slow.waitDistinct(t, 1, 10*time.Second)
		waitFor(t, 10*time.Second, "ack recorded", func() bool { _, ok := e.row(t, msgs[0].UUID); return !ok })
		require.Zero(t, other.distinct(), "the other relay never got the row")
	})
}
