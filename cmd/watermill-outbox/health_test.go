package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/require"
)

// fakeRelay is a forwarder as /healthz sees it.
type fakeRelay struct {
	mu     sync.Mutex
	paused bool
	since  time.Time
}

func (f *fakeRelay) Paused() (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused, f.since
}

func (f *fakeRelay) set(paused bool, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused, f.since = paused, since
}

// TestHealthz: healthy while the database answers and the relay is not
// paused longer than the threshold; otherwise 503 with each reason.
func TestHealthz(t *testing.T) {
	t.Parallel()
	var pingErr error
	var mu sync.Mutex
	ping := func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		return pingErr
	}
	setPing := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		pingErr = err
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := newHealth(ping, time.Minute)
	h.now = func() time.Time { return now }

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serveMetrics(ln, newRegistry(), h, watermill.NopLogger{})
	t.Cleanup(stop)
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}

	code, body := get("/healthz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "relay: not running")

	relay := &fakeRelay{}
	h.setRelay(relay)
	code, body = get("/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)

	relay.set(true, now.Add(-time.Minute))
	code, _ = get("/healthz")
	require.Equal(t, http.StatusOK, code, "paused exactly as long as allowed")

	relay.set(true, now.Add(-90*time.Second))
	setPing(errors.Join(errors.New("dial"), syscall.ECONNREFUSED))
	code, body = get("/healthz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "database: connection refused\nrelay: paused for 1m30s, the destination unavailable (longer than 1m0s)\n", body)

	relay.set(false, time.Time{})
	setPing(nil)
	code, _ = get("/healthz")
	require.Equal(t, http.StatusOK, code)

	code, body = get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "go_goroutines ")
	require.Contains(t, body, "process_start_time_seconds ")

	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}
