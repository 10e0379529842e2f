// Command bench measures this outbox against Watermill's own recipe
// (components/forwarder over watermill-sql v3, DefaultPostgreSQLSchema and
// DefaultPostgreSQLOffsetsAdapter) and against River
// (github.com/riverqueue/river) used as an outbox, side by side, on the same
// PostgreSQL, broker and payloads, each run of a side on fresh tables and a
// fresh topic or queue; and it measures our relay alone in the scenarios
// after "memory" below.
//
// The bench is a module of its own (this directory's go.mod, which
// replaces the outbox with ../..), so watermill-sql, River and their
// dependencies never reach the library's users. From the repository root:
//
//	go run -C _examples/bench . -scenario relay -sink kafka -n 20000
//
// Scenarios (-scenario), each with the command that runs it at full size
// (-sink amqp instead of kafka works for every one of them):
//
//	relay     N events (default 20,000) already committed; time until a
//	          consumer on the broker received all of them (events/s), for
//	          ours, the forwarder and River; -pairs P adds P rounds of
//	          ours and River in turn, and the median of the River ratios
//	          go run -C _examples/bench . -scenario relay -sink kafka -pairs 6
//	latency   -rate events/s (default 200), one per transaction, for N
//	          events (default 2,000); commit→received p50 and p99
//	          go run -C _examples/bench . -scenario latency -sink kafka
//	          With -pgbouncer URL, our side again with its store, the
//	          service's commits and its relay through that pooler, once
//	          with the relay's LISTEN on PostgreSQL directly (ListenURL
//	          = -pg) and once with its LISTEN through the pooler (deaf:
//	          the relay polls); ratio_pgbouncer is p50 (pooler, direct
//	          LISTEN) / p50 (direct)
//	          go run -C _examples/bench . -scenario latency -sink kafka \
//	            -pgbouncer postgres://postgres@127.0.0.1:6432/test?sslmode=disable
//	publish   N business transactions with one event each, 8 workers
//	          (transactions/s), also against a bare INSERT of the same row
//	          and with our wake-up off; N per writer and round (default
//	          1,000), medians of -rounds (21) interleaved rounds
//	          go run -C _examples/bench . -scenario publish -sink kafka
//	ordered   N events (default 20,000) over -keys keys (1,000): ordered vs
//	          unordered relay, and the forwarder
//	          go run -C _examples/bench . -scenario ordered -sink kafka
//	memory    peak RSS (VmHWM) of a relay process draining an N-event
//	          backlog (default 100,000), and a tenth of it
//	          go run -C _examples/bench . -scenario memory -sink kafka
//	stuck-key ordering on: key "hot" with -backlog rows (default 100,000,
//	          written first) whose head backs off (its publishes fail, its
//	          backoff is -backoff, 10m), then N rows (20,000) over -keys
//	          other keys (1,000); drain rate of the N, and of the same N on
//	          a fresh table without the hot key; median and max claim time
//	          of both drains. -db postgres, mysql or sqlite
//	          go run -C _examples/bench . -scenario stuck-key -sink kafka -db postgres
//	blocked-keys
//	          as stuck-key, but -keys keys (1,000) each with its head
//	          backing off and -backlog/-keys rows (100) behind it
//	          go run -C _examples/bench . -scenario blocked-keys -sink kafka
//	waiting   ordering off (DisableOrdering): -backlog rows (100,000) of a
//	          topic whose publishes fail, each attempted once before the
//	          timed part and backing off, then N due rows (20,000) of
//	          another topic; same figures as stuck-key. -db as stuck-key.
//	          Rows are keyed over -keys keys (-keys 0: no keys)
//	          go run -C _examples/bench . -scenario waiting -sink kafka -db postgres
//	backlog-1m
//	          a -backlog (default 1,000,000) backlog drained by a relay
//	          process, ordered (over -keys keys) and unordered, and an
//	          N-row backlog (20,000) with the same settings: rates, peak RSS
//	          of the relay process, big/small ratios
//	          go run -C _examples/bench . -scenario backlog-1m -sink kafka
//	instances 1 vs -instances (3) relay processes on one table draining N
//	          ordered events (default 100,000) over -keys keys: aggregate
//	          rates and reorderings at the consumer (must be 0)
//	          go run -C _examples/bench . -scenario instances -sink kafka
//	soak      -rate events/s (default 2,000), -batch events per
//	          transaction (default 1), ordering on, over -keys keys, for
//	          -duration (30m); per -window (5m): commit→received p50/p99,
//	          our table's size, its indexes' size and its dead tuples
//	          go run -C _examples/bench . -scenario soak -sink kafka
//	bare      the claim path's ceiling: Store.Claim (limit 1,000) +
//	          Store.MarkPublished in a loop, no broker, over N rows (20,000,
//	          as relay), next to our relay to the broker in the same run
//	          go run -C _examples/bench . -scenario bare -sink kafka
//	stats     SQLStore.Stats over -backlog (1,000,000) pending rows over 5
//	          topics, then over the same rows kept as published with 1,000
//	          pending: median and max of 7 calls each (no broker used)
//	          go run -C _examples/bench . -scenario stats
//	inbox     a consumer (a Watermill router, -workers handlers, messages
//	          from an in-process gochannel) whose handler makes one
//	          business INSERT, behind the inbox middleware and behind a
//	          plain transaction of its own: N messages a round (2,000),
//	          -rounds interleaved rounds; median rates, the median of
//	          the rounds' ratios (inbox/plain) with their range, and
//	          per-message p50 (no broker used); -driver pgx adds the same
//	          pair over a pgx pool (inbox.NewPgx) in the same rounds
//	          go run -C _examples/bench . -scenario inbox -rounds 15 -driver pgx
//
// Every scenario runs on PostgreSQL (-pg); stuck-key and waiting also on
// MySQL/MariaDB (-mysql) and SQLite (a temporary file) with -db.
//
// Sinks (-sink): kafka (the Apache Kafka broker at -kafka, by default the one
// scripts/services starts; -kafka kfake runs an in-process fake instead) or
// amqp (RabbitMQ at -amqp). River publishes through the publisher our side
// uses (Kafka acks=all, RabbitMQ confirms). River's settings are printed
// once per run on stderr; its tables live in a schema of their own,
// migrated once per run and dropped at its end.
//
// The last line printed by relay, latency, publish, ordered and memory is
//
//	bench S sink=K n=N outbox=<value> forwarder=<value> [extra=…] ratio=<r>
//
// where ratio is outbox/forwarder unless the scenario says otherwise (for
// latency forwarder p50/outbox p50, for memory outbox/forwarder); River's
// figure is extra river=…, and ratio_river compares ours with River as
// ratio does with the forwarder (relay and publish: ours/River rates;
// latency: River p50/our p50); publish also prints river_vs_raw and
// river_insert (how River's rows were inserted). The other scenarios end
// with one line "bench S sink=K n=N …" of their own figures.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"

	"github.com/e0a82c8c/watermill-outbox/config"
)

type options struct {
	scenario   string
	sink       string
	n          int
	backlog    int
	pgDSN      string
	pgbouncer  string
	mysqlDSN   string
	db         string
	amqpURL    string
	kafka      string
	payload    int
	partitions int
	workers    int
	rounds     int
	pairs      int
	rate       int
	batch      int
	keys       int
	instances  int
	backoff    time.Duration
	duration   time.Duration
	window     time.Duration
	noWake     bool
	driver     string
	metrics    bool
	timeout    time.Duration
	cpuProfile string
	only       string
	child      string // internal: run one relay side in a child process
	childID    string
	childTopic string
	childUnord bool
}

// defaults for the flags whose default depends on the scenario.
var scenarioDefaults = map[string]struct{ n, backlog, rate int }{
	"latency":    {n: 2000, rate: 200},
	"publish":    {n: 1000},
	"memory":     {n: 100000},
	"stuck-key":  {backlog: 100000},
	"waiting":    {backlog: 100000},
	"backlog-1m": {backlog: 1000000},
	"instances":  {n: 100000},
	"soak":       {rate: 2000},
	"stats":      {backlog: 1000000},
	"inbox":      {n: 2000},
}

func main() {
	var o options
	flag.StringVar(&o.scenario, "scenario", "relay", "relay, latency, publish, ordered, memory, stuck-key, blocked-keys, waiting, backlog-1m, instances, soak, bare, stats or inbox")
	flag.StringVar(&o.sink, "sink", "kafka", "kafka or amqp")
	flag.IntVar(&o.n, "n", 0, "events (default 20000; 2000 for latency; 1000 per writer and round for publish; 100000 for memory and instances; the free rows of stuck-key, blocked-keys and waiting; the small backlog of backlog-1m; not used by soak)")
	flag.IntVar(&o.backlog, "backlog", 0, "stuck-key: rows of the hot key; blocked-keys: rows of the blocked keys; waiting: rows backing off (default 100000); backlog-1m: the big backlog (default 1000000)")
	flag.StringVar(&o.pgDSN, "pg", env("OUTBOX_BENCH_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"), "PostgreSQL DSN")
	flag.StringVar(&o.pgbouncer, "pgbouncer", env("OUTBOX_BENCH_PGBOUNCER_DSN", ""), "latency: also our side through this PgBouncer (transaction pooling) URL, with the LISTEN direct (-pg) and through the pooler")
	flag.StringVar(&o.mysqlDSN, "mysql", env("OUTBOX_BENCH_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"), "MySQL/MariaDB DSN (-db mysql)")
	flag.StringVar(&o.db, "db", "postgres", "stuck-key and waiting: postgres, mysql or sqlite (a temporary file); every other scenario runs on PostgreSQL only")
	flag.StringVar(&o.amqpURL, "amqp", env("OUTBOX_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL")
	flag.StringVar(&o.kafka, "kafka", env("OUTBOX_BENCH_KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka brokers, comma-separated; kfake starts an in-process fake broker")
	flag.IntVar(&o.payload, "payload", 256, "payload bytes")
	flag.IntVar(&o.partitions, "partitions", 3, "partitions of each Kafka topic")
	flag.IntVar(&o.workers, "workers", 8, "publish: concurrent writers; soak: writer connections")
	flag.IntVar(&o.pairs, "pairs", 0, "relay: this many more rounds of our side and River in turn after the main run; the median of all rounds' River ratios (ratio_river_median) and their range")
	flag.IntVar(&o.rounds, "rounds", 21, "publish: rounds over all writers, each in a rotated order; medians count")
	flag.IntVar(&o.rate, "rate", 0, "latency: events per second (default 200); soak: events per second (default 2000)")
	flag.IntVar(&o.batch, "batch", 1, "soak: events per transaction")
	flag.IntVar(&o.keys, "keys", 1000, "ordered, stuck-key, blocked-keys, waiting, backlog-1m, instances, soak: partition keys")
	flag.IntVar(&o.instances, "instances", 3, "instances: relay processes of the second run")
	flag.DurationVar(&o.backoff, "backoff", 10*time.Minute, "stuck-key, blocked-keys, waiting: retry backoff (RetryBackoffMin and Max) of the rows whose publishes fail")
	flag.DurationVar(&o.duration, "duration", 30*time.Minute, "soak: how long to publish")
	flag.DurationVar(&o.window, "window", 5*time.Minute, "soak: one line of figures per window")
	flag.BoolVar(&o.noWake, "no-wake", false, "turn our relay's wake-up (LISTEN/NOTIFY) off")
	flag.StringVar(&o.driver, "driver", "", "relay, publish: pgx adds our side over a pgx pool (pgx.Tx, NewPgxStore) next to database/sql, in the same run; inbox: adds the pair over a pgx pool (inbox.NewPgx against a plain pgx transaction)")
	flag.BoolVar(&o.metrics, "metrics", false, "relay, latency: add our side with its metrics (package metrics) and a no-op tracer on, next to it without, in the same run")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up on a drain after this long")
	flag.StringVar(&o.only, "only", "", "relay: run only this side (outbox, forwarder or river), for profiling; ratios are then 0")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (relays, broker, consumer) to this file")
	flag.StringVar(&o.child, "child", "", "internal: run a relay side (outbox or forwarder) in a child process")
	flag.StringVar(&o.childID, "child-id", "", "internal")
	flag.StringVar(&o.childTopic, "child-topic", "", "internal")
	flag.BoolVar(&o.childUnord, "child-unordered", false, "internal")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), `Usage: go run -C _examples/bench . -scenario S -sink kafka|amqp [flags]

Scenarios: relay, latency, publish (ours, Watermill's forwarder and River);
ordered, memory (ours and the forwarder); stuck-key, blocked-keys, waiting,
backlog-1m, instances, soak, bare, stats (ours alone); inbox (the inbox
against a plain transaction). stuck-key and waiting run
on PostgreSQL, MySQL/MariaDB or SQLite (-db); every other scenario on
PostgreSQL only. The package documentation (go doc) describes each one.

Flags:
`)
		flag.PrintDefaults()
	}
	flag.Parse()
	d := scenarioDefaults[o.scenario]
	if o.n == 0 {
		o.n = cmpOr(d.n, 20000)
	}
	if o.backlog == 0 {
		o.backlog = cmpOr(d.backlog, 100000)
	}
	if o.rate == 0 {
		o.rate = cmpOr(d.rate, 200)
	}
	var err error
	if o.cpuProfile != "" {
		f, ferr := os.Create(o.cpuProfile)
		if ferr == nil {
			ferr = pprof.StartCPUProfile(f)
		}
		if ferr != nil {
			fmt.Fprintln(os.Stderr, "bench: "+ferr.Error())
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if o.child != "" {
		err = runChild(o)
	} else {
		err = run(o)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func cmpOr(v, def int) int {
	if v != 0 {
		return v
	}
	return def
}

// newRunner connects to the database and the broker (starting kfake when
// no Kafka address is given); closeRunner releases both.
func newRunner(o options) (r *runner, closeRunner func(), err error) {
	r = &runner{o: o}
	if o.driver != "" && o.driver != "pgx" && o.driver != "database/sql" {
		return nil, nil, fmt.Errorf("-driver %s: want pgx or database/sql", o.driver)
	}
	if o.pgbouncer != "" && o.scenario != "latency" {
		return nil, nil, fmt.Errorf("-pgbouncer: only the latency scenario runs through PgBouncer")
	}
	if o.db != "postgres" && o.scenario != "stuck-key" && o.scenario != "waiting" {
		return nil, nil, fmt.Errorf("-db %s: only stuck-key and waiting run on other databases than PostgreSQL", o.db)
	}
	if o.child != "" || o.db == "postgres" {
		if r.db, err = openDB("pgx", "PostgreSQL", o.pgDSN); err != nil {
			return nil, nil, err
		}
	}
	closeDB := func() {
		if r.db != nil {
			_ = r.db.Close()
		}
	}
	if r.b, err = newBroker(o.sink, o.kafka, o.amqpURL, o.partitions); err != nil {
		closeDB()
		return nil, nil, err
	}
	return r, func() {
		if r.riv != nil {
			r.riv.close()
		}
		r.b.Close()
		if r.pool != nil {
			r.pool.Close()
		}
		closeDB()
	}, nil
}

// pgxPool is the run's pgx pool on PostgreSQL, as large as its *sql.DB.
func (r *runner) pgxPool() (*pgxpool.Pool, error) {
	if r.pool != nil {
		return r.pool, nil
	}
	cfg, err := pgxpool.ParseConfig(r.o.pgDSN)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 32
	if r.pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		return nil, err
	}
	return r.pool, nil
}

func run(o options) error {
	r, closeRunner, err := newRunner(o)
	if err != nil {
		return err
	}
	defer closeRunner()
	var res result
	switch o.scenario {
	case "relay":
		res, err = r.relay()
	case "latency":
		res, err = r.latency()
	case "publish":
		res, err = r.publish()
	case "ordered":
		res, err = r.ordered()
	case "memory":
		res, err = r.memory()
	case "stuck-key":
		res, err = r.stuckKey()
	case "blocked-keys":
		res, err = r.blockedKeys()
	case "waiting":
		res, err = r.waiting()
	case "backlog-1m":
		res, err = r.backlog1m()
	case "instances":
		res, err = r.instancesScenario()
	case "soak":
		res, err = r.soak()
	case "bare":
		res, err = r.bare()
	case "stats":
		res, err = r.statsScenario()
	case "inbox":
		res, err = r.inboxScenario()
	default:
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
	if err != nil {
		return err
	}
	n := o.n
	if res.n > 0 {
		n = res.n
	}
	line := fmt.Sprintf("bench %s sink=%s n=%d", o.scenario, o.sink, n)
	if res.fields != nil {
		fmt.Println(line + " " + strings.Join(res.fields, " "))
		return nil
	}
	line += fmt.Sprintf(" outbox=%s forwarder=%s", res.outbox, res.forwarder)
	for _, kv := range res.extra {
		line += " " + kv
	}
	fmt.Printf("%s ratio=%.2f\n", line, res.ratio)
	return nil
}

type result struct {
	outbox, forwarder string
	extra             []string // "key=value", printed before ratio
	ratio             float64
	// fields, when set, replace all of the above: "key=value" in order,
	// for the scenarios that measure our relay alone.
	fields []string
	n      int // when set, the n printed (soak: the events committed)
}

type runner struct {
	o    options
	pool *pgxpool.Pool // PostgreSQL over pgx, opened on first use (-driver pgx)
	db   *sql.DB       // PostgreSQL
	b    *broker
	riv  *riverEnv // River's schema, once a River side was made
}

// ourConfig is the relay configuration of our side: the defaults, as a
// user gets them, or what the OUTBOX_* variables say, with the wake-up off
// if -no-wake says so.
func (r *runner) ourConfig() config.Config {
	c, err := config.FromEnv()
	if err != nil {
		logf("%v; using the defaults", err)
		c = config.Default()
	}
	c.DisableNotify = c.DisableNotify || r.o.noWake
	return c
}

// openDB opens and pings a pool of 32 connections; what names the server
// in errors.
func openDB(driver, what, dsn string) (*sql.DB, error) {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("%s at %s: %w", what, dsn, err)
	}
	return db, nil
}

func newID() string { return uuid.NewString() }

func runID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func rate(n int, d time.Duration) string { return fmt.Sprintf("%.0f/s", float64(n)/d.Seconds()) }

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
