package forwarder_test

import (
	"bytes"
	"context"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
)

// watchers counts the goroutines waiting for a row's verdict.
func watchers(t *testing.T) int {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&buf, 2))
	n := 0
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "forwarder.(*subscription).watch(") {
			n++
		}
	}
	return n
}

// TestCloseWithAFullWindow: a consumer takes one message and never settles
// it while the subscription holds hundreds of rows (the shape of Watermill's
// TestConcurrentSubscribe once its reader is done). Only the message handed
// out has a watcher; Close returns, releases every claim, and leaves no
// watcher behind. Not parallel: it counts the package's goroutines.
func TestCloseWithAFullWindow(t *testing.T) {
	e := newRelayEnv(t, backends[2])
	e.publish(t, "t", 300, nil)
	sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{}, nil)
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), "t")
	require.NoError(t, err)
	var first *message.Message
	select {
	case first = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	waitFor(t, 10*time.Second, "every row claimed", func() bool { return e.count(t, "claim_token IS NOT NULL") == 300 })
	require.Equal(t, 1, watchers(t), "one watcher: the message handed out; the rows waiting cost none")

	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("Close did not return")
	}
	first.Ack() // too late: not recorded
	require.Zero(t, watchers(t))
	require.Zero(t, e.count(t, "claim_token IS NOT NULL"), "every claim released")
	require.Equal(t, 300, e.count(t, "state = 'pending'"))
}
