package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Span attributes set on the span a delivery's context carries, if any.
const (
	// DuplicateAttribute is true when the delivery was a duplicate and
	// the handler did not run.
	DuplicateAttribute = attribute.Key("messaging.inbox.duplicate")
	// ConsumerAttribute is Config.Consumer.
	ConsumerAttribute = attribute.Key("messaging.inbox.consumer")
)

// Inbox records the messages a consumer has applied, in the transaction
// that applies them; see the package comment.
type Inbox struct {
	db     database
	config Config
	t      table
	insert string // t.insertQuery()
	logger watermill.LoggerAdapter
}

// New returns the inbox of consumer config.Consumer in table config.Table
// on db, whose dialect config.Dialect names. It does not touch the
// database: Migrate creates the table. A nil logger logs nothing.
func New(db *sql.DB, config Config, logger watermill.LoggerAdapter) (*Inbox, error) {
	if db == nil {
		return nil, errors.New("inbox: invalid config: db is nil")
	}
	return newInbox(sqlDB{db}, config, logger)
}

// NewPgx is New for a PostgreSQL pgx pool: the handler finds the delivery's
// pgx.Tx with outbox.PgxTxFromContext, and an outbox Publisher built on a
// pgx store writes under it. config.Dialect may be left empty. Over pgx the
// record is sent with the transaction's BEGIN, in one round trip; over
// database/sql, which sends the BEGIN on its own, it takes one more.
func NewPgx(pool *pgxpool.Pool, config Config, logger watermill.LoggerAdapter) (*Inbox, error) {
	if pool == nil {
		return nil, errors.New("inbox: invalid config: pool is nil")
	}
	d, err := pgxDialect(config.Dialect)
	if err != nil {
		return nil, err
	}
	config.Dialect = d
	return newInbox(pgxDB{pool}, config, logger)
}

func newInbox(db database, config Config, logger watermill.LoggerAdapter) (*Inbox, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	t := newTable(config.Dialect, config.Table)
	return &Inbox{db: db, config: config, t: t, insert: t.insertQuery(), logger: logger}, nil
}

// Config returns the settings the inbox was built with, defaults filled in.
func (in *Inbox) Config() Config { return in.config }

// Migrate creates the inbox table and its index if they do not exist. It
// is idempotent and safe to call from several instances at once.
func (in *Inbox) Migrate(ctx context.Context) error {
	if err := in.t.migrate(ctx, in.db); err != nil {
		return fmt.Errorf("inbox: migrate %s: %w", in.t.name, err)
	}
	return nil
}

// Middleware is the message.HandlerMiddleware that applies each message
// once: add it to a router (router.AddMiddleware) or a handler
// (handler.AddMiddleware) after Retry and PoisonQueue, so that each
// attempt is a transaction of its own.
//
// Per message it begins a transaction, records (consumer, UUID), and
//   - if the record was there already, rolls back and returns no error
//     (the router acks) without running the handler;
//   - otherwise runs the handler with the transaction in the message's
//     context (outbox.ContextWithTx or ContextWithPgxTx), publishes the
//     messages the handler returned into Config.Outbox under it, and
//     commits. A handler error, a panic, or a failed commit rolls back the
//     record and the handler's writes together and returns the error (the
//     router nacks).
//
// It returns no messages: what the handler returned is in the outbox.
func (in *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		start := time.Now()
		ctx := msg.Context()
		outcome, err := in.deliver(ctx, msg, h)
		in.observe(ctx, outcome, start)
		if outcome == Duplicate {
			in.logger.Debug("Duplicate message dropped", watermill.LogFields{"message_uuid": msg.UUID, "consumer": in.config.Consumer})
		}
		return nil, err
	}
}

func (in *Inbox) deliver(ctx context.Context, msg *message.Message, h message.HandlerFunc) (outcome Outcome, err error) {
	if msg.UUID == "" || len(msg.UUID) > MaxUUIDLen {
		return Failed, fmt.Errorf("%w: %q", ErrInvalidUUID, msg.UUID)
	}
	// The record is the transaction's first statement, sent with its BEGIN
	// where the driver allows.
	tx, n, err := in.db.beginWith(ctx, in.insert, in.config.Consumer, msg.UUID)
	if tx == nil {
		return Failed, fmt.Errorf("inbox: begin: %w", err)
	}
	done := false
	defer func() {
		if !done { // an error return, or a panic on its way up
			_ = tx.rollback(context.WithoutCancel(ctx))
		}
	}()
	fresh, err := in.recorded(n, err, msg.UUID)
	if err != nil {
		return Failed, err
	}
	if !fresh {
		return Duplicate, nil // deferred rollback: nothing was written
	}
	msg.SetContext(tx.bind(ctx))
	defer msg.SetContext(ctx) // the transaction ends here
	produced, err := h(msg)
	if err != nil {
		return Failed, err
	}
	if len(produced) > 0 {
		if err := in.forward(ctx, tx, produced); err != nil {
			return Failed, err
		}
	}
	done = true
	if err := tx.commit(ctx); err != nil {
		// Committed or not, the message is nacked: if it did commit, its
		// redelivery is a duplicate.
		return Failed, fmt.Errorf("inbox: commit: %w", err)
	}
	return Handled, nil
}

// recorded reads the result of the record's insert (n rows, err): whether
// the message is new.
func (in *Inbox) recorded(n int64, err error, uuid string) (bool, error) {
	if err != nil && in.t.d.duplicate(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inbox: record message %s: %w", uuid, err)
	}
	return n > 0, nil
}

// forward publishes what the handler returned into the outbox, under the
// handler's publish topic, in the delivery's transaction.
func (in *Inbox) forward(ctx context.Context, tx txn, produced []*message.Message) error {
	topic := message.PublishTopicFromCtx(ctx)
	if in.config.Outbox == nil || topic == "" {
		return fmt.Errorf("%w (%d messages; set Config.Outbox and add the handler with a publish topic)", ErrOutputWithoutOutbox, len(produced))
	}
	if err := tx.publisher(in.config.Outbox).Publish(topic, produced...); err != nil {
		return fmt.Errorf("inbox: publish to the outbox: %w", err)
	}
	return nil
}

func (in *Inbox) observe(ctx context.Context, outcome Outcome, start time.Time) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(DuplicateAttribute.Bool(outcome == Duplicate), ConsumerAttribute.String(in.config.Consumer))
	}
	if in.config.Observer != nil {
		in.config.Observer.ObserveDelivery(DeliveryEvent{
			Consumer: in.config.Consumer,
			Handler:  message.HandlerNameFromCtx(ctx),
			Outcome:  outcome,
			Duration: time.Since(start),
		})
	}
}
