package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// River as an outbox: a business transaction inserts a job carrying the
// message, and a River worker publishes it through the destination
// publisher our side uses. River is configured as its documentation
// advises for throughput.
const (
	riverFetchCooldown     = 10 * time.Millisecond
	riverFetchPollInterval = 100 * time.Millisecond
	riverMaxWorkers        = 1000
	riverPoolConns         = 32 // as many as the *sql.DB of the other sides
	// riverInsertDriver is how every River insert of the bench is made: on
	// the same *sql.Tx the other sides write under.
	riverInsertDriver = "database/sql"
)

// riverEnv is River's schema for one run of the bench: created and
// migrated (rivermigrate) once, its job table truncated after each River
// side, dropped when the run ends.
type riverEnv struct {
	schema string
	pool   *pgxpool.Pool // the working client's (riverpgxv5)
	db     *sql.DB       // the inserting client's (riverdatabasesql)
	ins    *river.Client[*sql.Tx]
	logger *slog.Logger
}

// river returns the run's River environment, creating it on first use.
func (r *runner) river() (*riverEnv, error) {
	if r.riv != nil {
		return r.riv, nil
	}
	ctx := context.Background()
	e := &riverEnv{
		schema: "bench_river_" + runID(),
		db:     r.db,
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	pc, err := pgxpool.ParseConfig(r.o.pgDSN)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = riverPoolConns
	if e.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, err
	}
	if _, err := r.db.ExecContext(ctx, `CREATE SCHEMA `+e.schema); err != nil {
		e.pool.Close()
		return nil, fmt.Errorf("river: create schema: %w", err)
	}
	r.riv = e // from here on closeRunner drops the schema
	m, err := rivermigrate.New(riverpgxv5.New(e.pool), &rivermigrate.Config{Schema: e.schema, Logger: e.logger})
	if err != nil {
		return nil, err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("river: migrate: %w", err)
	}
	e.ins, err = river.NewClient(riverdatabasesql.New(r.db), &river.Config{
		Schema: e.schema, FetchCooldown: riverFetchCooldown, FetchPollInterval: riverFetchPollInterval, Logger: e.logger,
	})
	if err != nil {
		return nil, err
	}
	logf("river: FetchCooldown=%s FetchPollInterval=%s MaxWorkers=%d (one queue, %q); works with riverpgxv5 over a pgxpool of %d connections; inserts with riverdatabasesql (InsertTx/InsertManyFastTx on the *sql.Tx the other sides use); schema %s migrated with rivermigrate, dropped at exit",
		riverFetchCooldown, riverFetchPollInterval, riverMaxWorkers, river.QueueDefault, riverPoolConns, e.schema)
	return e, nil
}

func (e *riverEnv) close() {
	_, _ = e.db.Exec(`DROP SCHEMA IF EXISTS ` + e.schema + ` CASCADE`)
	e.pool.Close()
}

// riverMessage is the job: the message as our publisher stores it.
type riverMessage struct {
	UUID     string            `json:"uuid"`
	Topic    string            `json:"topic"`
	Payload  []byte            `json:"payload"`
	Metadata map[string]string `json:"metadata"`
}

func (riverMessage) Kind() string { return "bench_outbox_message" }

// riverPublishWorker publishes each job's message through dest.
type riverPublishWorker struct {
	river.WorkerDefaults[riverMessage]
	dest message.Publisher
}

func (w *riverPublishWorker) Work(_ context.Context, job *river.Job[riverMessage]) error {
	m := message.NewMessage(job.Args.UUID, job.Args.Payload)
	for k, v := range job.Args.Metadata {
		m.Metadata.Set(k, v)
	}
	return w.dest.Publish(job.Args.Topic, m)
}

// riverSide is River used as an outbox.
type riverSide struct {
	e *riverEnv
}

func newRiverSide(r *runner) (*riverSide, error) {
	e, err := r.river()
	if err != nil {
		return nil, err
	}
	return &riverSide{e: e}, nil
}

func (s *riverSide) name() string { return "river" }

func (s *riverSide) setup(ctx context.Context) error {
	_, err := s.e.db.ExecContext(ctx, `TRUNCATE `+s.e.schema+`.river_job`)
	return err
}

func (s *riverSide) publish(tx *sql.Tx, topic string, msgs ...*message.Message) error {
	ctx := context.Background()
	job := func(m *message.Message) riverMessage {
		return riverMessage{UUID: m.UUID, Topic: topic, Payload: m.Payload, Metadata: m.Metadata}
	}
	if len(msgs) == 1 {
		_, err := s.e.ins.InsertTx(ctx, tx, job(msgs[0]), nil)
		return err
	}
	params := make([]river.InsertManyParams, len(msgs))
	for i, m := range msgs {
		params[i] = river.InsertManyParams{Args: job(m)}
	}
	_, err := s.e.ins.InsertManyFastTx(ctx, tx, params)
	return err
}

func (s *riverSide) startRelay(dest message.Publisher) (func(), error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, &riverPublishWorker{dest: dest})
	c, err := river.NewClient(riverpgxv5.New(s.e.pool), &river.Config{
		Schema:            s.e.schema,
		FetchCooldown:     riverFetchCooldown,
		FetchPollInterval: riverFetchPollInterval,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: riverMaxWorkers}},
		Workers:           workers,
		Logger:            s.e.logger,
	})
	if err != nil {
		return nil, err
	}
	if err := c.Start(context.Background()); err != nil {
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Stop(ctx)
	}, nil
}

func (s *riverSide) pending(ctx context.Context) (int, error) {
	var n int
	err := s.e.db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.e.schema+`.river_job
		WHERE state NOT IN ('completed', 'cancelled', 'discarded')`).Scan(&n)
	return n, err
}

func (s *riverSide) cleanup() { _, _ = s.e.db.Exec(`TRUNCATE ` + s.e.schema + `.river_job`) }
