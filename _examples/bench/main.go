// Command bench measures this outbox against Watermill's own recipe
// (components/forwarder over watermill-sql v3, DefaultPostgreSQLSchema and
// DefaultPostgreSQLOffsetsAdapter) side by side, on the same PostgreSQL,
// broker and payloads, each run of a side on fresh tables and a fresh topic
// or queue.
//
//	go run ./_examples/bench -scenario relay -sink kafka -n 20000
//
// Scenarios (-scenario):
//
//	relay    N events already committed; time until a consumer on the
//	         broker received all of them (events/s)
//	latency  200 events/s, one per transaction, for N events;
//	         commit→received p50 and p99
//	publish  N business transactions with one event each, 8 workers
//	         (transactions/s), also against a bare INSERT of the same row
//	         and with our wake-up off; N per writer and round (default
//	         1000), medians of -rounds (21) interleaved rounds
//	ordered  N events over 1000 keys: ordered vs unordered relay
//	memory   peak RSS (VmHWM) of a relay process draining a 100,000-event
//	         backlog (N defaults to 100000 here)
//
// Sinks (-sink): kafka (an in-process kfake broker unless -kafka is set) or
// amqp (RabbitMQ at -amqp). The last line printed is
//
//	bench S sink=K n=N outbox=<value> forwarder=<value> [extra=…] ratio=<r>
//
// where ratio is outbox/forwarder unless the scenario says otherwise.
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
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"

	"github.com/e0a82c8c/watermill-outbox/config"
)

type options struct {
	scenario   string
	sink       string
	n          int
	pgDSN      string
	amqpURL    string
	kafka      string
	payload    int
	partitions int
	workers    int
	rounds     int
	rate       int
	keys       int
	noWake     bool
	timeout    time.Duration
	cpuProfile string
	only       string
	child      string // internal: run one relay side for the memory scenario
	childID    string
	childTopic string
}

func main() {
	var o options
	flag.StringVar(&o.scenario, "scenario", "relay", "relay, latency, publish, ordered or memory")
	flag.StringVar(&o.sink, "sink", "kafka", "kafka or amqp")
	flag.IntVar(&o.n, "n", 0, "events (default 20000; 2000 for latency; 1000 per writer and round for publish; 100000 for memory)")
	flag.StringVar(&o.pgDSN, "pg", env("OUTBOX_BENCH_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"), "PostgreSQL DSN")
	flag.StringVar(&o.amqpURL, "amqp", env("OUTBOX_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL")
	flag.StringVar(&o.kafka, "kafka", os.Getenv("OUTBOX_BENCH_KAFKA_BROKERS"), "Kafka brokers, comma-separated; empty starts kfake in process")
	flag.IntVar(&o.payload, "payload", 256, "payload bytes")
	flag.IntVar(&o.partitions, "partitions", 3, "partitions of each Kafka topic")
	flag.IntVar(&o.workers, "workers", 8, "publish: concurrent writers")
	flag.IntVar(&o.rounds, "rounds", 21, "publish: rounds over all writers, each in a rotated order; medians count")
	flag.IntVar(&o.rate, "rate", 200, "latency: events per second")
	flag.IntVar(&o.keys, "keys", 1000, "ordered: partition keys")
	flag.BoolVar(&o.noWake, "no-wake", false, "turn our relay's wake-up (LISTEN/NOTIFY) off")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up on a run after this long")
	flag.StringVar(&o.only, "only", "", "relay: run only this side (outbox or forwarder), for profiling; ratio is then 0")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (relays, broker, consumer) to this file")
	flag.StringVar(&o.child, "child", "", "internal: run a relay side (outbox or forwarder) for the memory scenario")
	flag.StringVar(&o.childID, "child-id", "", "internal")
	flag.StringVar(&o.childTopic, "child-topic", "", "internal")
	flag.Parse()
	if o.n == 0 {
		switch o.scenario {
		case "latency":
			o.n = 2000
		case "memory":
			o.n = 100000
		case "publish":
			o.n = 1000
		default:
			o.n = 20000
		}
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

// newRunner connects to PostgreSQL and the broker (starting kfake when no
// Kafka address is given); closeRunner releases both.
func newRunner(o options) (r *runner, closeRunner func(), err error) {
	db, err := openDB(o.pgDSN)
	if err != nil {
		return nil, nil, err
	}
	b, err := newBroker(o.sink, o.kafka, o.amqpURL, o.partitions)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return &runner{o: o, db: db, b: b}, func() { b.Close(); _ = db.Close() }, nil
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
	default:
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
	if err != nil {
		return err
	}
	line := fmt.Sprintf("bench %s sink=%s n=%d outbox=%s forwarder=%s", o.scenario, o.sink, o.n, res.outbox, res.forwarder)
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
}

type runner struct {
	o  options
	db *sql.DB
	b  *broker
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

func openDB(dsn string) (*sql.DB, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("PostgreSQL at %s: %w", dsn, err)
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
