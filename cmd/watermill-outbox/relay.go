package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/admin"
	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	"github.com/e0a82c8c/watermill-outbox/internal/envvar"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/metrics"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const relayUsage = `Usage:
  watermill-outbox relay [--database-url URL] [--sink kafka|amqp] [--kafka-brokers H:P,...] [--amqp-url URL]
                         [--driver database/sql|pgx] [--listen-database-url URL] [--metrics-addr ADDR]
                         [--health-max-pause D] [overrides]

Runs one relay (forwarder.Forwarder) from the outbox table to Kafka or
RabbitMQ until SIGINT or SIGTERM; then it gives its claims back and exits 0.
Any number of relays can share a table. It creates the table if needed.

A database or broker that is down, at start or later, is logged and retried
until it answers: the relay never exits on its own. A bad setting exits 2 at
once, with one line naming it.

Each flag defaults to an environment variable:
  --database-url             OUTBOX_DATABASE_URL
  --sink                     OUTBOX_SINK (default: kafka or amqp, whichever of the two below is set)
  --kafka-brokers            OUTBOX_KAFKA_BROKERS, comma-separated host:port
  --kafka-max-message-bytes  OUTBOX_KAFKA_MAX_MESSAGE_BYTES (0: the sink's default)
  --amqp-url                 OUTBOX_AMQP_URL, amqp://user:pass@host:5672/
  --driver                   OUTBOX_DATABASE_DRIVER, PostgreSQL only: database/sql (default) or pgx (a pgx pool)
  --listen-database-url      OUTBOX_LISTEN_DATABASE_URL, PostgreSQL only: LISTEN for commits on a connection of
                             its own to this URL (PostgreSQL's direct address when --database-url is a
                             transaction pooler such as PgBouncer; empty: through --database-url)
  --metrics-addr             OUTBOX_METRICS_ADDR, e.g. :9464 (empty: no HTTP server)
  --health-max-pause         OUTBOX_HEALTH_MAX_PAUSE_SECONDS (default 60)
  --admin                    OUTBOX_ADMIN=true: serve the admin page at /admin/ (needs --metrics-addr)
  --admin-writes             OUTBOX_ADMIN_WRITES=true: enable its requeue, skip and purge actions
  --table                    OUTBOX_TABLE
The relay settings are the other OUTBOX_* variables of package config; the
overrides --lease, --batch, --max-in-flight, --poll and --ordered replace
OUTBOX_CLAIM_TIMEOUT_SECONDS, OUTBOX_BATCH_SIZE, OUTBOX_MAX_IN_FLIGHT,
OUTBOX_POLLING_INTERVAL_SECONDS and OUTBOX_DISABLE_ORDERING when given.

With --metrics-addr the relay serves over HTTP:
  /metrics  Prometheus metrics: the outbox's (package metrics: backlog per
            topic, relay counters and latencies) and the Go runtime's
  /healthz  200 "ok" while the database answers, the relay's heartbeat in
            the relay registry is current (written within
            OUTBOX_RELAY_TIMEOUT_SECONDS, 3s: else other relays may take
            its rows over) and the relay has not been paused, waiting for
            an unavailable broker, for longer than --health-max-pause;
            else 503 and the reasons, one per line. A LISTEN that
            receives no notifications (behind a transaction pooler,
            without --listen-database-url), and a relay that was declared
            dead and beats again, are reported on lines after "ok". It
            speaks for this relay only: rows of a dead relay show in
            outbox_orphaned until another relay takes them over (it logs
            that)
  /readyz   200 "ready" while the destination answers (checked at start and
            every 15s: a connection with the relay's credentials to
            RabbitMQ, a metadata request to Kafka); else 503 and why. The
            relay logs an error at start when it cannot reach it, and keeps
            running: it publishes once it can.
  /admin/   with --admin: the admin page (package admin), read-only unless
            --admin-writes. It has no login of its own: serve it only where
            the address is reachable by operators alone, or behind a proxy
            that authenticates them.

It logs to stderr (log/slog text), passwords shown as ***.
`

// defaultMaxPause is how long the relay may pause, its broker unavailable,
// before /healthz fails: long enough that a broker restart or a leader
// election passes unnoticed, short enough to page before the backlog grows
// far.
const defaultMaxPause = time.Minute

// relaySettings is what the relay runs with.
type relaySettings struct {
	db            dburl.Database
	sink          string
	kafkaBrokers  []string
	kafkaMaxBytes int
	amqpURL       string
	outbox        config.Config
	metricsAddr   string
	maxPause      time.Duration
	pgx           bool // the store over a pgx pool instead of database/sql
	admin         bool // serve the admin page at /admin/
	adminWrites   bool // with its actions
}

// parseRelay reads the relay's flags and environment. Its error reports
// every bad setting, each naming its flag and variable.
func (a *app) parseRelay(args []string) (relaySettings, error) {
	f := newFlags("relay", relayUsage)
	var d dbFlags
	d.register(f)
	sinkName := f.String("sink", "", "kafka or amqp")
	brokers := f.String("kafka-brokers", "", "Kafka brokers, comma-separated host:port")
	maxBytes := f.String("kafka-max-message-bytes", "", "Kafka producer message limit; 0 = the sink's default")
	amqpURL := f.String("amqp-url", "", "RabbitMQ URL")
	metricsAddr := f.String("metrics-addr", "", "serve /metrics and /healthz on this address (host:port or :port)")
	driver := f.String("driver", "", "PostgreSQL only: database/sql (the default) or pgx (a pgx pool, no database/sql)")
	listenURL := f.String("listen-database-url", "", "PostgreSQL only: LISTEN on a connection of its own to this URL (overrides OUTBOX_LISTEN_DATABASE_URL)")
	maxPause := f.String("health-max-pause", "", "longest pause for an unavailable broker before /healthz fails (seconds or a Go duration)")
	lease := f.Duration("lease", 0, "claim timeout (overrides OUTBOX_CLAIM_TIMEOUT_SECONDS)")
	batch := f.Int("batch", 0, "claim batch size (overrides OUTBOX_BATCH_SIZE)")
	inFlight := f.Int("max-in-flight", 0, "in-flight window (overrides OUTBOX_MAX_IN_FLIGHT)")
	poll := f.Duration("poll", 0, "polling interval (overrides OUTBOX_POLLING_INTERVAL_SECONDS)")
	ordered := f.Bool("ordered", true, "keep per-key order (overrides OUTBOX_DISABLE_ORDERING)")
	adminPage := f.String("admin", "", "true: serve the admin page at /admin/ on --metrics-addr")
	adminWrites := f.String("admin-writes", "", "true: enable the admin page's requeue, skip and purge actions")
	if err := a.parse(f, args); err != nil {
		return relaySettings{}, err
	}
	// A flag given wins over its variable.
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	value := func(flagName string, v *string, env string) (string, string) {
		if set[flagName] {
			return *v, "--" + flagName
		}
		return os.Getenv(env), env
	}

	var s relaySettings
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if dbu, _, err := a.database(&d); err != nil {
		errs = append(errs, err)
	} else {
		s.db = dbu
	}

	rawBrokers, _ := value("kafka-brokers", brokers, "OUTBOX_KAFKA_BROKERS")
	for _, b := range strings.Split(rawBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			s.kafkaBrokers = append(s.kafkaBrokers, b)
		}
	}
	s.amqpURL, _ = value("amqp-url", amqpURL, "OUTBOX_AMQP_URL")
	a.scrubbers = append(a.scrubbers, dburl.Scrubber(s.amqpURL))
	sinkValue, sinkSetting := value("sink", sinkName, "OUTBOX_SINK")
	switch s.sink = sinkValue; s.sink {
	case "":
		switch {
		case len(s.kafkaBrokers) > 0 && s.amqpURL == "":
			s.sink = "kafka"
		case s.amqpURL != "" && len(s.kafkaBrokers) == 0:
			s.sink = "amqp"
		case s.amqpURL != "":
			bad("--sink (OUTBOX_SINK): both Kafka brokers and an AMQP URL are set: say which, kafka or amqp")
		default:
			bad("no destination: set --kafka-brokers (OUTBOX_KAFKA_BROKERS) or --amqp-url (OUTBOX_AMQP_URL)")
		}
	case "kafka", "amqp":
	default:
		bad("%s: want kafka or amqp, got %q", sinkSetting, s.sink)
	}
	switch s.sink {
	case "kafka":
		if len(s.kafkaBrokers) == 0 {
			bad("--kafka-brokers (OUTBOX_KAFKA_BROKERS): required with the kafka sink")
		}
		if raw, setting := value("kafka-max-message-bytes", maxBytes, "OUTBOX_KAFKA_MAX_MESSAGE_BYTES"); raw != "" {
			n, err := strconv.Atoi(raw)
			if err != nil || n < 0 {
				bad("%s: want a non-negative integer, got %q", setting, raw)
			}
			s.kafkaMaxBytes = n
		}
	case "amqp":
		if s.amqpURL == "" {
			bad("--amqp-url (OUTBOX_AMQP_URL): required with the amqp sink")
		}
	}

	switch drv, setting := value("driver", driver, "OUTBOX_DATABASE_DRIVER"); drv {
	case "", "database/sql":
	case "pgx":
		if s.db.Dialect != "" && s.db.Dialect != outbox.PostgreSQL {
			bad("%s: pgx is for PostgreSQL, the database is %s", setting, s.db.Kind)
		}
		s.pgx = true
	default:
		bad("%s: want database/sql or pgx, got %q", setting, drv)
	}

	addr, addrSetting := value("metrics-addr", metricsAddr, "OUTBOX_METRICS_ADDR")
	if s.metricsAddr = addr; addr != "" {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			bad("%s: want host:port or :port, got %q", addrSetting, addr)
		}
	}
	for _, b := range []struct {
		flag, env string
		v         *string
		to        *bool
	}{{"admin", "OUTBOX_ADMIN", adminPage, &s.admin}, {"admin-writes", "OUTBOX_ADMIN_WRITES", adminWrites, &s.adminWrites}} {
		if raw, setting := value(b.flag, b.v, b.env); raw != "" {
			on, err := strconv.ParseBool(raw)
			if err != nil {
				bad("%s: want true or false, got %q", setting, raw)
			}
			*b.to = on
		}
	}
	if s.admin && s.metricsAddr == "" {
		bad("--admin (OUTBOX_ADMIN): the page is served on --metrics-addr (OUTBOX_METRICS_ADDR), which is not set")
	}
	if s.adminWrites && !s.admin {
		bad("--admin-writes (OUTBOX_ADMIN_WRITES): needs --admin (OUTBOX_ADMIN)")
	}
	s.maxPause = defaultMaxPause
	if raw, setting := value("health-max-pause", maxPause, "OUTBOX_HEALTH_MAX_PAUSE_SECONDS"); raw != "" {
		dur, err := envvar.Seconds(raw)
		if err != nil || dur <= 0 {
			bad("%s: want a positive number of seconds (e.g. 90) or a Go duration (e.g. 90s), got %q", setting, raw)
		}
		s.maxPause = dur
	}

	cfg, err := d.settings()
	if err != nil {
		return s, errors.Join(append(errs, err)...)
	}
	if set["lease"] {
		cfg.ClaimTimeout = *lease
	}
	if set["batch"] {
		cfg.BatchSize = *batch
	}
	if set["max-in-flight"] {
		cfg.MaxInFlight = *inFlight
	}
	if set["poll"] {
		cfg.PollingInterval = *poll
	}
	if set["ordered"] {
		cfg.DisableOrdering = !*ordered
	}
	if set["listen-database-url"] {
		cfg.ListenURL = *listenURL
	}
	a.scrubbers = append(a.scrubbers, dburl.Scrubber(cfg.ListenURL))
	if cfg.ListenURL != "" && s.db.Dialect != "" && s.db.Dialect != outbox.PostgreSQL {
		bad("--listen-database-url (OUTBOX_LISTEN_DATABASE_URL): LISTEN is PostgreSQL's, the database is %s", s.db.Kind)
	}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	s.outbox = cfg
	if len(errs) > 0 {
		return s, &usageError{msg: errors.Join(errs...).Error()}
	}
	return s, nil
}

func (a *app) relay(ctx context.Context, args []string) error {
	s, err := a.parseRelay(args)
	if err != nil {
		return err
	}
	logger := newLogger(a.stderr, a.scrub)

	// What can be checked without the network is checked before anything
	// runs: a bad setting exits 2 now, not after a retry loop.
	dest, err := newSink(s, logger)
	if err != nil {
		return usagef("%s", err)
	}
	defer dest.Close()
	var store *outbox.SQLStore
	var ping func(context.Context) error
	if s.pgx {
		pool, err := s.db.OpenPgxPool()
		if err != nil {
			return usagef("%s", err)
		}
		defer pool.Close()
		if store, err = outbox.NewPgxStore(pool, outbox.PgxStoreConfig{Outbox: s.outbox}, logger); err != nil {
			return usagef("%s", err)
		}
		ping = pool.Ping
	} else {
		// Its own connections: on MariaDB the server ends a transaction the
		// relay leaves idle for the relay timeout (dburl.OpenRelay).
		cfg := s.outbox
		cfg.SetDefaults()
		db, err := s.db.OpenRelay(cfg.RelayTimeout)
		if err != nil {
			return usagef("%s", err)
		}
		defer db.Close()
		db.SetMaxOpenConns(maxDBConns)
		if store, err = outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: s.db.Dialect, Outbox: s.outbox}, logger); err != nil {
			return usagef("%s", err)
		}
		ping = db.PingContext
	}
	h := newHealth(ping, s.maxPause, logger)
	ready := newReach(s, logger)
	h.listen = store.ListenState
	var obs observe.Observer
	if s.metricsAddr != "" {
		ln, err := net.Listen("tcp", s.metricsAddr)
		if err != nil {
			return usagef("--metrics-addr (OUTBOX_METRICS_ADDR): %s", dburl.Cause(err))
		}
		reg := newRegistry()
		m, err := metrics.New(store, metrics.Config{}, logger)
		if err != nil {
			return err
		}
		reg.MustRegister(m)
		obs = m
		mounts := []func(*http.ServeMux){func(mux *http.ServeMux) { mux.Handle("GET /readyz", ready) }}
		if s.admin {
			page, err := admin.NewHandler(store, admin.Config{AllowWrites: s.adminWrites}, logger)
			if err != nil {
				return err
			}
			mounts = append(mounts, func(mux *http.ServeMux) { mux.Handle("/admin/", http.StripPrefix("/admin", page)) })
			logger.Info("relay: serving the admin page at /admin/", watermill.LogFields{"writes": s.adminWrites})
		}
		stop := serveMetrics(ln, reg, h, logger, mounts...)
		defer stop()
		logger.Info("relay: serving /metrics and /healthz", watermill.LogFields{"addr": ln.Addr().String()})
	}
	go ready.run(ctx)
	runRelay(ctx, s, store, dest, h, obs, logger)
	logger.Info("relay: stopped", watermill.LogFields{"pid": os.Getpid()})
	return nil
}

// maxDBConns bounds the relay's database/sql pool (pgx pools are bounded
// by pgx): a relay needs a few connections (claims, acks, fate writes,
// LISTEN, /healthz), and nothing it serves should open more.
const maxDBConns = 16

// runRelay relays until ctx ends. Nothing but the end of ctx makes it
// return.
func runRelay(ctx context.Context, s relaySettings, store *outbox.SQLStore, dest message.Publisher, h *health, obs observe.Observer, logger watermill.LoggerAdapter) {
	if !retry(ctx, logger, "migrate the outbox table", func() error { return store.Migrate(ctx) }) {
		return
	}
	for attempt := 1; ; attempt++ {
		fwd, err := forwarder.NewForwarder(store, dest, forwarder.Config{Observer: obs}, logger)
		if err != nil {
			// Every setting was validated: only a bug gets here.
			logger.Error("relay: forwarder", err, nil)
			<-ctx.Done()
			return
		}
		h.setRelay(fwd)
		go func() {
			select {
			case <-fwd.Running():
				logger.Info("relay: running", watermill.LogFields{
					"pid": os.Getpid(), "database": s.db.String(), "table": s.outbox.Table, "sink": s.sink,
					"lease": s.outbox.ClaimTimeout.String(), "batch": s.outbox.BatchSize,
					"max_in_flight": s.outbox.MaxInFlight, "ordered": !s.outbox.DisableOrdering, "pgx": s.pgx,
					"listen_url": s.outbox.ListenURL != "",
				})
			case <-ctx.Done():
			}
		}()
		err = fwd.Run(ctx)
		h.setRelay(nil)
		if cerr := fwd.Close(); cerr != nil {
			logger.Error("relay: close forwarder", cerr, nil)
		}
		if ctx.Err() != nil {
			return
		}
		// Run ends only with ctx; should it not, start over rather than exit.
		wait := backoff.Jittered(attempt, time.Second, 30*time.Second)
		logger.Error("relay: forwarder stopped unexpectedly, restarting", err, watermill.LogFields{"retry_in": wait.String()})
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

func newSink(s relaySettings, logger watermill.LoggerAdapter) (message.Publisher, error) {
	if s.sink == "amqp" {
		p, err := sink.NewAMQPPublisher(sink.AMQPConfig{URL: s.amqpURL}, logger)
		if err != nil {
			return nil, fmt.Errorf("--amqp-url (OUTBOX_AMQP_URL) %s: %w", dburl.Redact(s.amqpURL), err)
		}
		return p, nil
	}
	p, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: s.kafkaBrokers, MaxMessageBytes: s.kafkaMaxBytes}, logger)
	if err != nil {
		return nil, fmt.Errorf("--kafka-brokers (OUTBOX_KAFKA_BROKERS): %w", err)
	}
	return p, nil
}

// newLogger logs to w at info level, every text through scrub.
func newLogger(w io.Writer, scrub func(string) string) watermill.LoggerAdapter {
	return watermill.NewSlogLogger(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(_ []string, attr slog.Attr) slog.Attr {
			switch v := attr.Value; {
			case v.Kind() == slog.KindString:
				attr.Value = slog.StringValue(scrub(v.String()))
			case v.Kind() == slog.KindAny:
				if err, ok := v.Any().(error); ok && err != nil {
					attr.Value = slog.StringValue(scrub(err.Error()))
				}
			}
			return attr
		},
	})))
}

// retry runs fn, a database call, until it succeeds (true) or ctx ends
// (false), logging each failure and backing off as every database retry of
// the relay does (backoff.DBMin to backoff.DBMax).
func retry(ctx context.Context, logger watermill.LoggerAdapter, what string, fn func() error) bool {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := backoff.Jittered(attempt, backoff.DBMin, backoff.DBMax)
		logger.Error("relay: cannot "+what+", retrying", err, watermill.LogFields{"retry_in": wait.String()})
		if !backoff.Sleep(ctx, wait) {
			return false
		}
	}
}
