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

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
)

// pingTimeout bounds the database check of one /healthz request: a
// prober's own timeout is commonly a few seconds.
const pingTimeout = 2 * time.Second

// pauser is what /healthz asks the relay (forwarder.Forwarder.Paused).
type pauser interface {
	Paused() (paused bool, since time.Time)
}

// health is the relay's /healthz: healthy while the database answers and
// the relay has not been paused, for an unavailable broker, longer than
// maxPause.
type health struct {
	ping     func(ctx context.Context) error
	maxPause time.Duration
	now      func() time.Time

	mu    sync.Mutex
	relay pauser // nil while no forwarder runs
}

func newHealth(ping func(ctx context.Context) error, maxPause time.Duration) *health {
	return &health{ping: ping, maxPause: maxPause, now: time.Now}
}

// setRelay names the running forwarder; nil while none runs.
func (h *health) setRelay(p pauser) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.relay = p
}

// check returns what is wrong, one line each; none when healthy.
func (h *health) check(ctx context.Context) []string {
	var problems []string
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := h.ping(ctx); err != nil {
		problems = append(problems, "database: "+dburl.Cause(err))
	}
	h.mu.Lock()
	relay := h.relay
	h.mu.Unlock()
	if relay == nil {
		return append(problems, "relay: not running (starting, or waiting for the database)")
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
		fmt.Fprintln(w, strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintln(w, "ok")
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
