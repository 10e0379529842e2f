package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// pingTimeout bounds the database check of /healthz: a prober's own
// timeout is commonly a few seconds.
const pingTimeout = 2 * time.Second

// pingTTL is how long /healthz reuses the database check's result: a
// flood of requests costs the database one ping a second, not one each.
const pingTTL = time.Second

// pauser is what /healthz asks the relay (forwarder.Forwarder's Paused
// and Heartbeat).
type pauser interface {
	Paused() (paused bool, since time.Time)
	Heartbeat() forwarder.Heartbeat
}

// health is the relay's /healthz: healthy while the database answers, the
// relay's heartbeat in the relay registry has not expired, and the relay
// has not been paused, for an unavailable broker, longer than maxPause.
// The body gives generic reasons only (the endpoint may be reachable by
// anyone who can reach the port); the database's error, which can name
// hosts and roles, goes to the log.
//
// It speaks for this relay only: whether other relays are alive it cannot
// tell (a relay paused or killed answers no probe at all). Rows a dead
// relay still holds show in outbox_orphaned until a live relay takes them
// over, which that relay logs.
type health struct {
	ping     func(ctx context.Context) error
	maxPause time.Duration
	now      func() time.Time
	logger   watermill.LoggerAdapter

	// listen reports the store's LISTEN (SQLStore.ListenState); nil: none.
	listen func() outbox.ListenState

	mu    sync.Mutex
	relay pauser // nil while no forwarder runs

	// The database check, shared by the requests of pingTTL (pingMu).
	pingMu   sync.Mutex
	ttl      time.Duration
	pingedAt time.Time     // when the last check ended
	pingErr  error         // its result
	pinging  chan struct{} // closed when the check in flight ends; nil when none
}

func newHealth(ping func(ctx context.Context) error, maxPause time.Duration, logger watermill.LoggerAdapter) *health {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &health{ping: ping, maxPause: maxPause, now: time.Now, logger: logger, ttl: pingTTL}
}

// setRelay names the running forwarder; nil while none runs.
func (h *health) setRelay(p pauser) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.relay = p
}

// database returns the result of a database check at most ttl old: the
// last one's, else the one in flight's, else a new one's. One check runs at
// a time, on a context of its own, so a request that gives up does not
// fail the check for the others.
func (h *health) database(ctx context.Context) error {
	h.pingMu.Lock()
	if h.pinging == nil && time.Since(h.pingedAt) < h.ttl && !h.pingedAt.IsZero() {
		err := h.pingErr
		h.pingMu.Unlock()
		return err
	}
	wait := h.pinging
	if wait == nil {
		wait = make(chan struct{})
		h.pinging = wait
		go h.check1(wait)
	}
	h.pingMu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.pingMu.Lock()
	defer h.pingMu.Unlock()
	return h.pingErr
}

// check1 runs one database check and publishes its result.
func (h *health) check1(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	err := h.ping(ctx)
	h.pingMu.Lock()
	defer h.pingMu.Unlock()
	switch {
	case err != nil && (h.pingErr == nil || h.pingedAt.IsZero()):
		h.logger.Error("relay: /healthz: the database does not answer", errors.New(dburl.Cause(err)), nil)
	case err != nil:
		h.logger.Debug("relay: /healthz: the database still does not answer: "+dburl.Cause(err), nil)
	}
	h.pingErr, h.pingedAt, h.pinging = err, time.Now(), nil
	close(done)
}

// notes returns what is degraded but healthy, one line each: a relay
// whose LISTEN receives nothing still delivers every row, by polling, and
// a restart would not fix it, so it does not fail the check; nor does a
// relay that was declared dead and beats again.
func (h *health) notes() []string {
	var notes []string
	if h.listen != nil && h.listen() == outbox.ListenDeaf {
		notes = append(notes, "listen: receives no commit notifications, not even its own, so the relay polls "+
			"(likely a transaction pooler in --database-url: set --listen-database-url or "+
			"OUTBOX_LISTEN_DATABASE_URL to PostgreSQL's direct address)")
	}
	h.mu.Lock()
	relay := h.relay
	h.mu.Unlock()
	if relay == nil {
		return notes
	}
	if hb := relay.Heartbeat(); hb.Lapses > 0 && !hb.Expired {
		times := "times"
		if hb.Lapses == 1 {
			times = "time"
		}
		notes = append(notes, fmt.Sprintf("relay: declared dead %d %s, last %s ago (its heartbeat had expired): it gave back the rows "+
			"it had not handed out and registered again; what it was publishing then may have gone out twice",
			hb.Lapses, times, h.now().Sub(hb.LastLapse).Round(time.Second)))
	}
	return notes
}

// heartbeat returns the problem with the relay's heartbeat, "" when none:
// expired, other relays may take its rows over (it hands none out
// meanwhile).
func (h *health) heartbeat(hb forwarder.Heartbeat) string {
	if !hb.Expired {
		return ""
	}
	if hb.Last.IsZero() {
		return fmt.Sprintf("relay: no heartbeat written yet (relay timeout %s): the relay registry does not answer "+
			"(details in the relay's log)", hb.Timeout)
	}
	return fmt.Sprintf("relay: heartbeat not written for %s (relay timeout %s): other relays may take its rows over; "+
		"it hands out none until a beat lands (details in the relay's log)",
		h.now().Sub(hb.Last).Round(time.Second), hb.Timeout)
}

// check returns what is wrong, one line each; none when healthy.
func (h *health) check(ctx context.Context) []string {
	var problems []string
	if err := h.database(ctx); err != nil {
		problems = append(problems, "database: unavailable (details in the relay's log)")
	}
	h.mu.Lock()
	relay := h.relay
	h.mu.Unlock()
	if relay == nil {
		return append(problems, "relay: not running (starting, or waiting for the database)")
	}
	if p := h.heartbeat(relay.Heartbeat()); p != "" {
		problems = append(problems, p)
	}
	if paused, since := relay.Paused(); paused {
		if d := h.now().Sub(since); d > h.maxPause {
			problems = append(problems, fmt.Sprintf("relay: paused for %s, the destination unavailable (longer than %s)",
				d.Round(time.Second), h.maxPause))
		}
	}
	return problems
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	problems := h.check(r.Context())
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	} else {
		problems = []string{"ok"}
	}
	fmt.Fprintln(w, strings.Join(append(problems, h.notes()...), "\n"))
}

// newRegistry is the registry /metrics serves: the Go runtime's and the
// process's collectors, on a registry of the relay's own rather than the
// global one, so nothing a library registers globally leaks into it.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// serveMetrics serves /metrics from reg and /healthz from h on ln until
// the returned stop is called.
func serveMetrics(ln net.Listener, reg *prometheus.Registry, h *health, logger watermill.LoggerAdapter, mounts ...func(*http.ServeMux)) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /healthz", h)
	for _, mount := range mounts {
		mount(mux)
	}
	// Every phase bounded, so a slow or idle client holds no connection
	// (and goroutine) for long.
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("relay: metrics server stopped", err, nil)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}
}
