// Command relayproc is a bare outbox relay: it runs one forwarder from an
// outbox table to Kafka or RabbitMQ until SIGINT or SIGTERM, and nothing
// else. The fault suite (package faults, build tag "faults") builds it with
// `go build` and runs it as a separate OS process, so it can be killed with
// SIGKILL mid-batch and restarted.
//
//	go build -o /tmp/relay ./internal/relayproc
//	RELAY_DSN=postgres://postgres@127.0.0.1:5432/test?sslmode=disable \
//	RELAY_KAFKA_BROKERS=127.0.0.1:9092 OUTBOX_TABLE=watermill_outbox /tmp/relay
//
// Settings come from flags, each defaulting to an environment variable:
//
//	-dialect                 RELAY_DIALECT                  postgres (default), mysql, sqlite
//	-dsn                     RELAY_DSN                      database DSN (required)
//	-sink                    RELAY_SINK                     kafka (default) or amqp
//	-kafka-brokers           RELAY_KAFKA_BROKERS            comma-separated host:port
//	-kafka-max-message-bytes RELAY_KAFKA_MAX_MESSAGE_BYTES  producer limit; 0 = sink default
//	-amqp-url                RELAY_AMQP_URL                 amqp://user:pass@host:port/
//
// The relay settings are the OUTBOX_* variables of package config
// (config.FromEnv); the flags -lease, -batch, -max-in-flight, -poll and
// -ordered override OUTBOX_CLAIM_TIMEOUT_SECONDS, OUTBOX_BATCH_SIZE,
// OUTBOX_MAX_IN_FLIGHT, OUTBOX_POLLING_INTERVAL_SECONDS and
// OUTBOX_DISABLE_ORDERING when given.
//
// It logs to stderr. A bad setting exits with status 2 at once; everything
// else — a database or broker that is down at start or goes away later — is
// logged and retried, and the process keeps running until a signal, when it
// closes the forwarder (releasing its claims) and exits 0.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/go-sql-driver/mysql" // driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// settings is what the relay runs with.
type settings struct {
	dialect       outbox.Dialect
	dsn           string
	sink          string
	kafkaBrokers  []string
	kafkaMaxBytes int
	amqpURL       string
	outbox        config.Config
}

func main() {
	s, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(2)
	}
	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run(ctx, s, logger)
	logger.Info("relay: stopped", watermill.LogFields{"pid": os.Getpid()})
}

func parse(args []string) (settings, error) {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	dialect := fs.String("dialect", envOr("RELAY_DIALECT", "postgres"), "database dialect: postgres, mysql or sqlite")
	dsn := fs.String("dsn", os.Getenv("RELAY_DSN"), "database DSN")
	sinkName := fs.String("sink", envOr("RELAY_SINK", "kafka"), "destination: kafka or amqp")
	brokers := fs.String("kafka-brokers", os.Getenv("RELAY_KAFKA_BROKERS"), "Kafka brokers, comma-separated")
	maxBytes := fs.String("kafka-max-message-bytes", os.Getenv("RELAY_KAFKA_MAX_MESSAGE_BYTES"), "Kafka producer message limit; 0 or empty = sink default")
	amqpURL := fs.String("amqp-url", os.Getenv("RELAY_AMQP_URL"), "RabbitMQ URL")
	lease := fs.Duration("lease", 0, "claim timeout (overrides OUTBOX_CLAIM_TIMEOUT_SECONDS)")
	batch := fs.Int("batch", 0, "claim batch size (overrides OUTBOX_BATCH_SIZE)")
	inFlight := fs.Int("max-in-flight", 0, "in-flight window (overrides OUTBOX_MAX_IN_FLIGHT)")
	poll := fs.Duration("poll", 0, "polling interval (overrides OUTBOX_POLLING_INTERVAL_SECONDS)")
	ordered := fs.Bool("ordered", true, "keep per-key order (overrides OUTBOX_DISABLE_ORDERING)")
	if err := fs.Parse(args); err != nil {
		return settings{}, err
	}

	var s settings
	var errs []error
	var err error
	if s.dialect, err = outbox.ParseDialect(*dialect); err != nil {
		errs = append(errs, fmt.Errorf("-dialect: %w", err))
	}
	if s.dsn = *dsn; s.dsn == "" {
		errs = append(errs, errors.New("-dsn (RELAY_DSN) is required"))
	}
	switch s.sink = *sinkName; s.sink {
	case "kafka":
		for _, b := range strings.Split(*brokers, ",") {
			if b = strings.TrimSpace(b); b != "" {
				s.kafkaBrokers = append(s.kafkaBrokers, b)
			}
		}
		if len(s.kafkaBrokers) == 0 {
			errs = append(errs, errors.New("-kafka-brokers (RELAY_KAFKA_BROKERS) is required with -sink kafka"))
		}
		if *maxBytes != "" {
			n, err := strconv.Atoi(*maxBytes)
			if err != nil || n < 0 {
				errs = append(errs, fmt.Errorf("-kafka-max-message-bytes (RELAY_KAFKA_MAX_MESSAGE_BYTES): want a non-negative integer, got %q", *maxBytes))
			}
			s.kafkaMaxBytes = n
		}
	case "amqp":
		if s.amqpURL = *amqpURL; s.amqpURL == "" {
			errs = append(errs, errors.New("-amqp-url (RELAY_AMQP_URL) is required with -sink amqp"))
		}
	default:
		errs = append(errs, fmt.Errorf("-sink: want kafka or amqp, got %q", s.sink))
	}

	if s.outbox, err = config.FromEnv(); err != nil {
		return s, errors.Join(append(errs, err)...)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["lease"] {
		s.outbox.ClaimTimeout = *lease
	}
	if set["batch"] {
		s.outbox.BatchSize = *batch
	}
	if set["max-in-flight"] {
		s.outbox.MaxInFlight = *inFlight
	}
	if set["poll"] {
		s.outbox.PollingInterval = *poll
	}
	if set["ordered"] {
		s.outbox.DisableOrdering = !*ordered
	}
	if err := s.outbox.Validate(); err != nil {
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// run relays until ctx ends. Nothing but the end of ctx makes it return.
func run(ctx context.Context, s settings, logger watermill.LoggerAdapter) {
	driver := map[outbox.Dialect]string{outbox.PostgreSQL: "pgx", outbox.MySQL: "mysql", outbox.SQLite: "sqlite"}[s.dialect]
	db, err := sql.Open(driver, s.dsn)
	if err != nil {
		// Only a driver that cannot parse the DSN fails here.
		logger.Error("relay: open database", err, nil)
		<-ctx.Done()
		return
	}
	defer db.Close()

	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: s.dialect, Outbox: s.outbox}, logger)
	if err != nil {
		logger.Error("relay: store", err, nil)
		<-ctx.Done()
		return
	}
	if !retry(ctx, logger, "migrate the outbox table", func() error { return store.Migrate(ctx) }) {
		return
	}

	// The sinks connect on first use: a broker that is down pauses the
	// relay (no attempt charged) until it answers.
	dest, err := newSink(s, logger)
	if err != nil {
		logger.Error("relay: sink", err, nil)
		<-ctx.Done()
		return
	}
	defer dest.Close()

	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		fwd, err := forwarder.NewForwarder(store, dest, forwarder.Config{}, logger)
		if err != nil {
			logger.Error("relay: forwarder", err, nil)
			<-ctx.Done()
			return
		}
		go func() {
			select {
			case <-fwd.Running():
				logger.Info("relay: running", watermill.LogFields{
					"pid": os.Getpid(), "table": s.outbox.Table, "sink": s.sink,
					"lease": s.outbox.ClaimTimeout.String(), "batch": s.outbox.BatchSize,
					"max_in_flight": s.outbox.MaxInFlight, "ordered": !s.outbox.DisableOrdering,
				})
			case <-ctx.Done():
			}
		}()
		err = fwd.Run(ctx)
		if cerr := fwd.Close(); cerr != nil {
			logger.Error("relay: close forwarder", cerr, nil)
		}
		if ctx.Err() != nil {
			return
		}
		// Run ends only with ctx; should it not, start over rather than exit.
		logger.Error("relay: forwarder stopped unexpectedly, restarting", err, watermill.LogFields{"retry_in": backoff.String()})
		if !sleep(ctx, backoff) {
			return
		}
	}
}

func newSink(s settings, logger watermill.LoggerAdapter) (message.Publisher, error) {
	if s.sink == "amqp" {
		return sink.NewAMQPPublisher(sink.AMQPConfig{URL: s.amqpURL}, logger)
	}
	return sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: s.kafkaBrokers, MaxMessageBytes: s.kafkaMaxBytes}, logger)
}

// retry runs fn until it succeeds (true) or ctx ends (false), logging each
// failure and backing off up to 10s.
func retry(ctx context.Context, logger watermill.LoggerAdapter, what string, fn func() error) bool {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 10*time.Second) {
		err := fn()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		logger.Error("relay: cannot "+what+", retrying", err, watermill.LogFields{"retry_in": backoff.String()})
		if !sleep(ctx, backoff) {
			return false
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
