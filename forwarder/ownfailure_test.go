package forwarder_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
)

// TestForwarderMessageThatAlwaysTimesOut: one message fails every time
// with an error classified Unavailable (a timeout) while the destination
// accepts every other message. The failure is the message's own: it is
// charged, keeps its error and is dead after MaxRetryCount, the others
// are delivered once each, and the relay does not stay paused.
func TestForwarderMessageThatAlwaysTimesOut(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0])
	dest := newRecorder()
	bad := e.publish(t, "t", 1, nil)[0].UUID
	failed := make(chan struct{}, 1000)
	dest.setFail(func(_ string, m *message.Message) error {
		if m.UUID != bad {
			return nil
		}
		failed <- struct{}{}
		return context.DeadlineExceeded
	})
	cfg := fastConfig()
	cfg.MaxRetryCount = 3
	// Its failures count as its own after ten times this (100ms).
	cfg.UnavailableBackoffMax = 10 * time.Millisecond
	f := runForwarder(t, e.with(t, cfg), dest, forwarder.Config{})

	// Each failure of the bad message commits a good one, so other messages
	// get through between its failures however fast the machine is.
	var good []string
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if r, ok := e.row(t, bad); ok && r.State == "dead" {
			break
		}
		select {
		case <-failed:
			good = append(good, e.publish(t, "t", 1, nil)[0].UUID)
		case <-tick.C:
		case <-deadline:
			r, _ := e.row(t, bad)
			t.Fatalf("the message that always times out is not dead: %+v", r)
		}
	}
	r, _ := e.row(t, bad)
	require.Equal(t, 3, r.Attempts)
	require.Contains(t, r.LastError.String, "deadline exceeded")
	require.False(t, r.Claimed)

	dest.waitDistinct(t, len(good), 30*time.Second)
	for _, uuid := range good {
		require.Equal(t, 1, dest.count(uuid), "good messages are delivered once")
	}
	require.Zero(t, dest.count(bad))
	paused, _ := f.Paused()
	require.False(t, paused, "the destination accepts messages: the relay is not paused")
}
