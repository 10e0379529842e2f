package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
)

// reachInterval is how often the relay checks that it can reach its
// destination.
const reachInterval = 15 * time.Second

// reach knows whether the relay can reach its destination: a broker that
// refuses the relay's credentials, or that does not answer, shows at
// start (a log line, /readyz) instead of only once rows arrive and the
// relay pauses on them. It never stops the relay: the broker may come.
type reach struct {
	check  func(ctx context.Context) error
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	checked bool
	err     error
}

func newReach(s relaySettings, logger watermill.LoggerAdapter) *reach {
	r := &reach{logger: logger}
	if s.sink == "amqp" {
		r.check = func(ctx context.Context) error { return checkAMQP(ctx, s.amqpURL) }
	} else {
		r.check = func(ctx context.Context) error { return checkKafka(ctx, s.kafkaBrokers) }
	}
	return r
}

// run checks at once, then every reachInterval until ctx ends, logging
// each change: an error when the destination cannot be reached, info when
// it can again.
func (r *reach) run(ctx context.Context) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.check(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		was, first := r.err, !r.checked
		r.checked, r.err = true, err
		r.mu.Unlock()
		switch {
		case err != nil && (first || was == nil):
			r.logger.Error("relay: cannot reach the destination (the relay keeps running, and will publish once it can)", err, nil)
		case err == nil && was != nil:
			r.logger.Info("relay: the destination answers again", nil)
		case err == nil && first:
			r.logger.Info("relay: the destination answers", nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(reachInterval):
		}
	}
}

// ServeHTTP is /readyz: 200 "ready" once the destination was reached at
// the last check, else 503 and why.
func (r *reach) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	checked, err := r.checked, r.err
	r.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case !checked:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "destination: not checked yet")
	case err != nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "destination: "+oneLine(err.Error()))
	default:
		fmt.Fprintln(w, "ready")
	}
}

// checkAMQP opens and closes a connection: the broker answers and takes
// the relay's credentials and vhost.
func checkAMQP(ctx context.Context, url string) error {
	cfg := amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)}
	if dl, ok := ctx.Deadline(); ok {
		cfg.Dial = amqp.DefaultDial(time.Until(dl))
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return fmt.Errorf("RabbitMQ at %s: %w", dburl.Redact(url), err)
	}
	return conn.Close()
}

// checkKafka asks the brokers for the cluster's metadata.
func checkKafka(ctx context.Context, brokers []string) error {
	cfg := sarama.NewConfig()
	cfg.Net.DialTimeout = 10 * time.Second
	cfg.Metadata.Retry.Max = 0
	if dl, ok := ctx.Deadline(); ok {
		cfg.Net.DialTimeout = time.Until(dl)
	}
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return fmt.Errorf("Kafka at %s: %w", strings.Join(brokers, ","), err)
	}
	return client.Close()
}
