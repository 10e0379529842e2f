package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// fakeRelay is a forwarder as /healthz sees it.
type fakeRelay struct {
	mu     sync.Mutex
	paused bool
	since  time.Time
	hb     forwarder.Heartbeat
}

func (f *fakeRelay) Heartbeat() forwarder.Heartbeat {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hb
}

func (f *fakeRelay) setHeartbeat(hb forwarder.Heartbeat) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hb = hb
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
	h := newHealth(ping, time.Minute, nil)
	h.now = func() time.Time { return now }
	h.ttl = 0 // every request checks: the test changes the database's answer

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
	require.Equal(t, "database: unavailable (details in the relay's log)\nrelay: paused for 1m30s, the destination unavailable (longer than 1m0s)\n", body)

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

// TestHealthzPingsOnceAndShowsNoDetails: a flood of /healthz requests
// costs the database one ping while one is in flight and none while the
// result is fresh; the body names no host, role or driver message, which go
// to the log.
func TestHealthzPingsOnceAndShowsNoDetails(t *testing.T) {
	t.Parallel()
	var pings atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{}, 100)
	ping := func(context.Context) error {
		pings.Add(1)
		started <- struct{}{}
		<-release
		return errors.New(`failed to connect: role "svc_user" does not exist; cannot resolve db-internal.corp.example`)
	}
	var logged strings.Builder
	var logMu sync.Mutex
	h := newHealth(ping, time.Minute, watermill.NewStdLoggerWithOut(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logged.Write(p)
	}), false, false))
	h.ttl = time.Hour
	h.setRelay(&fakeRelay{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serveMetrics(ln, newRegistry(), h, watermill.NopLogger{})
	t.Cleanup(stop)

	const clients = 30
	bodies := make(chan string, clients)
	for range clients {
		go func() {
			resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
			if err != nil {
				bodies <- err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			bodies <- string(b)
		}()
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no ping")
	}
	close(release)
	for range clients {
		select {
		case b := <-bodies:
			require.Equal(t, "database: unavailable (details in the relay's log)\n", b)
		case <-time.After(10 * time.Second):
			t.Fatal("a request got no answer")
		}
	}
	require.EqualValues(t, 1, pings.Load(), "one ping for the flood")
	logMu.Lock()
	require.Contains(t, logged.String(), "svc_user", "the details are logged")
	logMu.Unlock()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestMetricsServerTimeouts: the server bounds every phase of a
// connection, an idle keep-alive included.
func TestMetricsServerTimeouts(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serveMetrics(ln, newRegistry(), newHealth(func(context.Context) error { return nil }, time.Minute, nil), watermill.NopLogger{})
	t.Cleanup(stop)
	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	require.NoError(t, err)
	// The answer, then the idle keep-alive is closed by the server: the
	// read ends with EOF well before the deadline.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(2*time.Minute)))
	_, err = io.ReadAll(conn)
	require.NoError(t, err, "the server closed the idle connection")
}

// TestHealthzListenDeaf: a LISTEN that receives nothing (a transaction
// pooler) is named on /healthz with the setting that fixes it, on a line
// after "ok": the relay still delivers, by polling, and a restart would not
// help, so the status stays 200.
func TestHealthzListenDeaf(t *testing.T) {
	t.Parallel()
	h := newHealth(func(context.Context) error { return nil }, time.Minute, nil)
	var mu sync.Mutex
	state := outbox.ListenReceiving
	h.listen = func() outbox.ListenState {
		mu.Lock()
		defer mu.Unlock()
		return state
	}
	h.setRelay(&fakeRelay{})
	get := serveHealthz(t, h)
	code, body := get()
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)

	mu.Lock()
	state = outbox.ListenDeaf
	mu.Unlock()
	code, body = get()
	require.Equal(t, http.StatusOK, code)
	require.Regexp(t, `^ok\nlisten: receives no commit notifications.*transaction pooler.*--listen-database-url.*OUTBOX_LISTEN_DATABASE_URL`, body)
}

// TestHealthzHeartbeat: /healthz fails while the relay's heartbeat has
// expired (other relays may take its rows over), and, once it beats again,
// says on a line after "ok" that it was declared dead.
func TestHealthzHeartbeat(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := newHealth(func(context.Context) error { return nil }, time.Minute, nil)
	h.now = func() time.Time { return now }
	relay := &fakeRelay{}
	h.setRelay(relay)
	get := serveHealthz(t, h)
	hb := forwarder.Heartbeat{Relay: "host:1:ab", Timeout: 3 * time.Second, Last: now.Add(-time.Second)}
	relay.setHeartbeat(hb)
	code, body := get()
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)

	hb.Last, hb.Expired = now.Add(-7*time.Second), true
	relay.setHeartbeat(hb)
	code, body = get()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "relay: heartbeat not written for 7s (relay timeout 3s): other relays may take its rows over; "+
		"it hands out none until a beat lands (details in the relay's log)\n", body)

	hb.Last, hb.Expired = time.Time{}, true
	relay.setHeartbeat(hb)
	code, body = get()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "relay: no heartbeat written yet (relay timeout 3s)")

	hb.Last, hb.Expired, hb.Lapses, hb.LastLapse = now.Add(-time.Second), false, 2, now.Add(-90*time.Second)
	relay.setHeartbeat(hb)
	code, body = get()
	require.Equal(t, http.StatusOK, code, "beating again: healthy")
	require.Equal(t, "ok\nrelay: declared dead 2 times, last 1m30s ago (its heartbeat had expired): it gave back the rows "+
		"it had not handed out and registered again; what it was publishing then may have gone out twice\n", body)
}

// serveHealthz serves h on a loopback port for the test and returns a GET
// of its /healthz: the status code and the body.
func serveHealthz(t *testing.T, h *health) func() (int, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(serveMetrics(ln, newRegistry(), h, watermill.NopLogger{}))
	return func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
}
