package main

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/e0a82c8c/watermill-outbox/config"
	ourfwd "github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/metrics"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// side is one contender: how it writes events in a transaction, and how
// its relay drains them to a destination publisher.
type side interface {
	name() string
	// setup creates the side's fresh tables.
	setup(ctx context.Context) error
	// publish writes msgs to topic under tx.
	publish(tx *sql.Tx, topic string, msgs ...*message.Message) error
	// startRelay runs the relay until the returned stop is called.
	startRelay(dest message.Publisher) (stop func(), err error)
	// pending counts rows the relay has not finished.
	pending(ctx context.Context) (int, error)
	cleanup()
}

// ourSide is this project: watermilloutbox.Publisher and forwarder.Forwarder.
type ourSide struct {
	db      *sql.DB
	dialect outbox.Dialect
	table   string
	cfg     config.Config
	pub     *outbox.Publisher
	store   *outbox.SQLStore
	// wrap, when set, wraps the relay's store (the claim timer) and its
	// destination publisher (the failing keys).
	wrapStore func(relaystore.Store) relaystore.Store
	wrapDest  func(message.Publisher) message.Publisher
	// pool, when set, runs the store (and the relay) over a pgx pool
	// instead of the *sql.DB (-driver pgx).
	pool *pgxpool.Pool
	// instrument turns the relay's metrics (package metrics as its
	// Observer) and a no-op tracer on (-metrics).
	instrument bool
	label      string // name() when set
}

func newOurSide(db *sql.DB, id string, cfg config.Config) *ourSide {
	return newOurSideOn(db, outbox.PostgreSQL, id, cfg)
}

// newOurSideOn is our side on a database of dialect d.
func newOurSideOn(db *sql.DB, d outbox.Dialect, id string, cfg config.Config) *ourSide {
	cfg.Table = "bench_outbox_" + id
	return &ourSide{db: db, dialect: d, table: cfg.Table, cfg: cfg}
}

func (s *ourSide) name() string { return cmp.Or(s.label, "outbox") }

func (s *ourSide) setup(ctx context.Context) error {
	var err error
	if s.pool != nil {
		s.store, err = outbox.NewPgxStore(s.pool, outbox.PgxStoreConfig{Outbox: s.cfg}, nil)
	} else {
		s.store, err = outbox.NewSQLStore(s.db, outbox.SQLStoreConfig{Dialect: s.dialect, Outbox: s.cfg}, nil)
	}
	if err != nil {
		return err
	}
	if err := s.store.Migrate(ctx); err != nil {
		return err
	}
	s.pub, err = outbox.NewPublisher(s.store, outbox.PublisherConfig{}, nil)
	return err
}

func (s *ourSide) publish(tx *sql.Tx, topic string, msgs ...*message.Message) error {
	return s.pub.WithTx(tx).Publish(topic, msgs...)
}

func (s *ourSide) startRelay(dest message.Publisher) (func(), error) {
	var store relaystore.Store = s.store
	if s.wrapStore != nil {
		store = s.wrapStore(store)
	}
	if s.wrapDest != nil {
		dest = s.wrapDest(dest)
	}
	var fc ourfwd.Config
	if s.instrument {
		m, err := metrics.New(s.store, metrics.Config{}, nil)
		if err != nil {
			return nil, err
		}
		if err := prometheus.NewRegistry().Register(m); err != nil {
			return nil, err
		}
		fc.Observer, fc.TracerProvider = m, noop.NewTracerProvider()
	}
	f, err := ourfwd.NewForwarder(store, dest, fc, nil)
	if err != nil {
		return nil, err
	}
	return runRouter(f.Run, f.Running(), f.Close)
}

// publishPgx writes msgs to topic under a pgx transaction (-driver pgx).
func (s *ourSide) publishPgx(tx pgx.Tx, topic string, msgs ...*message.Message) error {
	return s.pub.WithPgxTx(tx).Publish(topic, msgs...)
}

func (s *ourSide) pending(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.table+` WHERE state = 'pending'`).Scan(&n)
	return n, err
}

func (s *ourSide) cleanup() { _, _ = s.db.Exec(`DROP TABLE IF EXISTS ` + s.table) }

// fwdSide is Watermill's outbox recipe: components/forwarder over
// watermill-sql v3 with DefaultPostgreSQLSchema and
// DefaultPostgreSQLOffsetsAdapter, all settings at their defaults.
type fwdSide struct {
	db    *sql.DB
	topic string // the forwarder topic: tables watermill_<topic>, watermill_offsets_<topic>
}

func newFwdSide(db *sql.DB, id string) *fwdSide {
	return &fwdSide{db: db, topic: "bench_fwd_" + id}
}

func (s *fwdSide) name() string { return "forwarder" }

func (s *fwdSide) schema() wsql.DefaultPostgreSQLSchema { return wsql.DefaultPostgreSQLSchema{} }

func (s *fwdSide) subscriber() (*wsql.Subscriber, error) {
	return wsql.NewSubscriber(s.db, wsql.SubscriberConfig{
		SchemaAdapter:  s.schema(),
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}, nil)
}

func (s *fwdSide) setup(context.Context) error {
	sub, err := s.subscriber()
	if err != nil {
		return err
	}
	return sub.SubscribeInitialize(s.topic)
}

func (s *fwdSide) publish(tx *sql.Tx, topic string, msgs ...*message.Message) error {
	pub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: s.schema()}, nil)
	if err != nil {
		return err
	}
	return forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: s.topic}).Publish(topic, msgs...)
}

func (s *fwdSide) startRelay(dest message.Publisher) (func(), error) {
	sub, err := s.subscriber()
	if err != nil {
		return nil, err
	}
	f, err := forwarder.NewForwarder(sub, dest, nil, forwarder.Config{ForwarderTopic: s.topic})
	if err != nil {
		return nil, err
	}
	return runRouter(f.Run, f.Running(), f.Close)
}

func (s *fwdSide) pending(ctx context.Context) (int, error) {
	// Rows past the consumer group's offset.
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM "watermill_`+s.topic+`" m
		WHERE NOT EXISTS (SELECT 1 FROM "watermill_offsets_`+s.topic+`" o
		WHERE (m.transaction_id, m."offset") <= (o.last_processed_transaction_id, o.offset_acked))`).Scan(&n)
	return n, err
}

func (s *fwdSide) cleanup() {
	_, _ = s.db.Exec(`DROP TABLE IF EXISTS "watermill_` + s.topic + `", "watermill_offsets_` + s.topic + `"`)
}

func runRouter(run func(context.Context) error, running chan struct{}, closeFn func() error) (func(), error) {
	done := make(chan error, 1)
	go func() { done <- run(context.Background()) }()
	select {
	case <-running:
	case err := <-done:
		return nil, fmt.Errorf("relay stopped: %w", err)
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("relay did not start")
	}
	return func() {
		_ = closeFn()
		<-done
	}, nil
}

// makeMessages builds n messages with payloads of size bytes (JSON, as
// watermill-sql's default payload column is JSON), a "seq" header and,
// when keys > 0, a partition key out of keys.
func makeMessages(n, size, keys int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = newMessage(i, size, keyOf(i, keys))
	}
	return msgs
}

// keyOf is message i's partition key among keys ("" when keys is 0).
func keyOf(i, keys int) string {
	if keys <= 0 {
		return ""
	}
	return "key-" + strconv.Itoa(i%keys)
}

// newMessage is message i: a payload of size bytes, "seq" i and, unless
// key is "", that partition key.
func newMessage(i, size int, key string) *message.Message {
	m := message.NewMessage(newID(), payload(i, size))
	m.Metadata.Set("seq", strconv.Itoa(i))
	if key != "" {
		m.Metadata.Set(outbox.PartitionKeyMetadataKey, key)
	}
	return m
}

func payload(i, size int) []byte {
	head := `{"n":` + strconv.Itoa(i) + `,"pad":"`
	pad := max(size-len(head)-2, 0)
	return []byte(head + strings.Repeat("x", pad) + `"}`)
}

// seed commits msgs through s in transactions of 500 (one multi-row INSERT
// each, on both sides).
func seed(ctx context.Context, db *sql.DB, s side, topic string, msgs []*message.Message) error {
	for start := 0; start < len(msgs); start += 500 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := s.publish(tx, topic, msgs[start:min(start+500, len(msgs))]...); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}
