package forwarder_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// gatedRegistry is a store whose heartbeats can be held at a gate, as if
// the relay's process were paused (SIGSTOP) when it was about to beat.
type gatedRegistry struct {
	*outbox.SQLStore
	mu      sync.Mutex
	gate    chan struct{} // nil: open
	entered chan struct{} // signalled when a beat waits at the gate
}

func (g *gatedRegistry) Beat(_ context.Context, id string, ttl time.Duration) (relaystore.Beat, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-gate // a paused process's beat is late, whatever its deadline
	}
	return g.SQLStore.Beat(context.Background(), id, ttl)
}

func (g *gatedRegistry) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
}

// open lets the beats through again; idempotent.
func (g *gatedRegistry) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

// holdSecond is a destination whose second publish waits until released:
// the send in flight. (The relay's first claim takes one row, to learn
// the rows' size; its second takes the rest of the key.)
type holdSecond struct {
	*recorder
	mu                sync.Mutex
	calls             int
	entered, released chan struct{}
	releaseOnce       sync.Once
}

func (h *holdSecond) Publish(topic string, msgs ...*message.Message) error {
	h.mu.Lock()
	h.calls++
	second := h.calls == 2
	h.mu.Unlock()
	if second {
		close(h.entered)
		<-h.released
	}
	return h.recorder.Publish(topic, msgs...)
}

func (h *holdSecond) release() { h.releaseOnce.Do(func() { close(h.released) }) }

// settledRows adds up the rows the relay's successful fenced writes named.
type settledRows struct {
	observe.NopObserver
	mu   sync.Mutex
	rows int
}

func (s *settledRows) ObserveWrite(e observe.WriteEvent) {
	if e.Err != nil || e.Op == observe.WriteRenew {
		return
	}
	s.mu.Lock()
	s.rows += e.Rows
	s.mu.Unlock()
}

func (s *settledRows) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rows
}

// TestLapsedRelayPublishesOnlyWhatItHandedOut: a relay holds nine rows of
// one key, the first one's publish in flight, when it is declared dead (its
// beat held back, its registry row expired) and another relay takes the
// rows over. Its next beat finds the lapse: it gives back the rows it had
// not handed out, so the only one it publishes is the one in flight (its
// duplicate), not its whole window; every write it makes is fenced.
func TestLapsedRelayPublishesOnlyWhatItHandedOut(t *testing.T) {
	expired := map[outbox.Dialect]string{
		outbox.PostgreSQL: `now() - interval '1 hour'`,
		outbox.MySQL:      `'2000-01-01 00:00:00'`,
		outbox.SQLite:     `0`,
	}
	for _, b := range backends[:3] {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			const n = 10
			e := newRelayEnv(t, b)
			e.publish(t, "t", n, func(int) string { return "k" })
			reg := &gatedRegistry{SQLStore: e.store, entered: make(chan struct{}, 1)}
			dest := &holdSecond{recorder: newRecorder(), entered: make(chan struct{}), released: make(chan struct{})}
			obs := &settledRows{}
			f := runForwarder(t, reg, dest, forwarder.Config{Observer: obs})
			t.Cleanup(dest.release) // before the forwarder closes (cleanups run last first)
			t.Cleanup(reg.open)

			select {
			case <-dest.entered:
			case <-time.After(30 * time.Second):
				t.Fatal("no publish began")
			}
			// The first row is published; the second is in flight, the
			// other eight queue behind it.
			const held = n - 1
			waitFor(t, 30*time.Second, "the relay to hold the other rows", func() bool {
				return e.count(t, "state = 'pending' AND claim_token IS NOT NULL") == held
			})
			relay := f.Heartbeat().Relay
			require.NotEmpty(t, relay)

			// Paused: its beats stop (one waits at the gate, none is under
			// way), its registry row expires, another relay takes over.
			reg.hold()
			select {
			case <-reg.entered:
			case <-time.After(30 * time.Second):
				t.Fatal("no beat came to the gate")
			}
			_, err := e.db.Exec(`UPDATE `+e.table+`_relays SET alive_until = `+expired[b.dialect]+` WHERE id = `+placeholder(b.dialect), relay)
			require.NoError(t, err)
			other, err := e.store.Claim(context.Background(), relaystore.ClaimRequest{Limit: 100, Lease: time.Hour, Ordered: true, Relay: "other"})
			require.NoError(t, err)
			require.Len(t, other.Rows, held, "the other relay takes every row over")
			require.Equal(t, held, other.TakenOver[relay])

			// Resumed: its beat finds it was declared dead; then the send in
			// flight returns.
			reg.open()
			waitFor(t, 30*time.Second, "the relay to find it was declared dead", func() bool { return f.Heartbeat().Lapses == 1 })
			dest.release()
			waitFor(t, 30*time.Second, "the relay's writes for every row it held", func() bool { return obs.count() >= n })

			require.Equal(t, 2, len(dest.snapshot()), "publishes: the declared-dead relay published the first row and the send in flight only, not the rest of its window")
			require.Equal(t, held, e.count(t, "claim_token = '"+other.Token+"'"), "its writes were fenced: every row is the other relay's")
			hb := f.Heartbeat()
			require.False(t, hb.Expired)
			require.False(t, hb.LastLapse.IsZero())
		})
	}
}

// expiredAtPublish is a destination that counts the messages it got while
// the relay's heartbeat had expired.
type expiredAtPublish struct {
	*recorder
	f       atomic.Pointer[forwarder.Forwarder]
	expired atomic.Int64
}

func (d *expiredAtPublish) Publish(topic string, msgs ...*message.Message) error {
	if f := d.f.Load(); f != nil && f.Heartbeat().Expired {
		d.expired.Add(int64(len(msgs)))
	}
	return d.recorder.Publish(topic, msgs...)
}

// TestRelayHandsOutNothingWhileItsHeartbeatExpired: while no beat of the
// relay lands for longer than RelayTimeout (paused, cut off from the
// database), Heartbeat says so and the relay hands out none of the rows it
// claims: other relays may be taking its rows over. Once a beat lands they
// go out.
func TestRelayHandsOutNothingWhileItsHeartbeatExpired(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0])
	cfg := fastConfig()
	cfg.RelayTimeout = time.Second
	reg := &gatedRegistry{SQLStore: e.with(t, cfg), entered: make(chan struct{}, 1)}
	dest := &expiredAtPublish{recorder: newRecorder()}
	f := runForwarder(t, reg, dest, forwarder.Config{})
	dest.f.Store(f)
	e.publish(t, "t", 1, nil)
	dest.waitDistinct(t, 1, 30*time.Second)
	require.False(t, f.Heartbeat().Expired)

	reg.hold()
	t.Cleanup(reg.open) // before the forwarder closes (cleanups run last first)
	waitFor(t, 30*time.Second, "the heartbeat to expire", func() bool { return f.Heartbeat().Expired })
	e.publish(t, "t", 3, nil)
	waitFor(t, 30*time.Second, "the relay to claim the new rows", func() bool {
		return e.count(t, "state = 'pending' AND claim_token IS NULL") == 0
	})
	reg.open()
	dest.waitDistinct(t, 4, 30*time.Second)
	require.Zero(t, dest.expired.Load(), "messages published while the relay's heartbeat had expired")
}
