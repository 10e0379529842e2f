package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Runner is what a forwarder and a Watermill router share.
type Runner interface {
	Run(ctx context.Context) error
	Close() error
	Running() chan struct{}
}

// Start runs r until the test ends, then closes it and waits for Run to
// return nil. It fails the test when r has not started within 10s or Run
// returns before Close.
func Start(t testing.TB, what string, r Runner) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Errorf("%s: Run did not return after Close", what)
		}
	})
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("%s stopped: %v", what, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not start", what)
	}
}
