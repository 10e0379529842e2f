package watermilloutbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

// maxRowsPerInsert bounds one INSERT statement's bind parameters (5 a row)
// well below PostgreSQL's 65535 and SQLite's 32766. A larger Publish is
// several statements in the same transaction: still all or nothing.
const maxRowsPerInsert = 1000

// maxTopicLen is the longest topic stored; Kafka allows 249, RabbitMQ 255.
const maxTopicLen = 255

// PublisherConfig configures a Publisher. The table, the size limits and
// the wake-up settings come from the store's config.Config (NewPublisher
// takes the store), so they are stated once.
type PublisherConfig struct {
	// AutoCommit lets Publish, when it finds no transaction, write the
	// messages in a transaction of its own on the store's database. This
	// gives up the outbox's point (atomicity with business writes), so it
	// is off by default: zero (false) means such a Publish fails with
	// ErrNoTransaction.
	AutoCommit bool

	// Notifier, when set, is told after every Publish that wrote rows:
	// pass the relay's forwarder.Subscriber (Forwarder.Subscriber) when
	// publisher and relay share a process, for a wake-up within about a
	// millisecond on any dialect. Optional; nil tells nobody.
	Notifier Notifier

	// ForbiddenMetadataKeys are metadata keys Publish refuses
	// (ErrForbiddenMetadata): credentials, which would outlive the request
	// in the table and reach every consumer. Keys compare case-insensitively,
	// trimmed of spaces and NULs, with '_' read as '-' ("X_API_KEY" is
	// "x-api-key"). Default: DefaultForbiddenMetadataKeys (authorization,
	// proxy-authorization, cookie, set-cookie, x-api-key); nil means the
	// default, an empty non-nil slice forbids none. To add keys, append to
	// DefaultForbiddenMetadataKeys().
	ForbiddenMetadataKeys []string
}

// Notifier learns that a Publish wrote rows. forwarder.Subscriber
// implements it.
type Notifier interface {
	// Notify is called after rows were written. committed is true when
	// they are committed already (AutoCommit); otherwise they are part of
	// the caller's transaction, which commits later or never, so the
	// notified party must not expect to see them yet.
	Notify(committed bool)
}

// Publisher is a message.Publisher that inserts messages into the outbox
// table inside the caller's transaction. If the transaction commits, the
// relay delivers the messages at least once; if it rolls back, so do the
// messages.
//
// The transaction is found, in this order: the one bound by WithTx (a
// *sql.Tx) or WithPgxTx (a pgx.Tx); the one carried by the messages'
// context (ContextWithTx, ContextWithPgxTx); with AutoCommit, a new one on
// the store's database. Otherwise Publish returns ErrNoTransaction.
//
// watermill-sql's Publisher also accepts a *sql.Tx, but it maps each topic
// to a table of its own (and v3, which this module's benchmark compares
// with, runs its INSERT under context.Background(); v4 takes the message
// context). The outbox keeps all topics in one table, which the relay
// claims across, so the INSERT is built here.
type Publisher struct {
	store  *SQLStore
	config PublisherConfig
	outbox config.Config // the store's
	table  table
	logger watermill.LoggerAdapter

	forbidden forbiddenKeys

	// notifyQuery is the NOTIFY statement, "" when none is sent.
	notifyQuery string
	// lastNotify is when this Publisher last sent a NOTIFY (UnixNano).
	lastNotify atomic.Int64

	// mu is held for reading by every Publish and for writing by Close,
	// so Close waits for Publish calls in progress.
	mu     sync.RWMutex
	closed bool
}

// NewPublisher returns a Publisher writing into store's table, with the
// store's MaxPayloadBytes, MaxMetadataBytes, DisableNotify and
// NotifyInterval. A nil logger logs nothing.
func NewPublisher(store *SQLStore, config PublisherConfig, logger watermill.LoggerAdapter) (*Publisher, error) {
	if store == nil {
		return nil, errors.New("invalid config: store is nil")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	p := &Publisher{store: store, config: config, outbox: store.Config(), table: store.t, logger: logger,
		forbidden: newForbiddenKeys(config.ForbiddenMetadataKeys)}
	if !p.outbox.DisableNotify {
		p.notifyQuery = p.table.d.notify(sqlident.NotifyChannel(p.table.name))
	}
	return p, nil
}

// Publish inserts messages into the outbox under the transaction described on
// Publisher, as one multi-row INSERT: all of them or none. It returns once the
// rows are part of the transaction; they become visible to the relay when it
// commits.
//
// A message without a "traceparent" of its own whose context carries a valid
// OpenTelemetry span is stored with that span's W3C trace context
// ("traceparent", "tracestate"), so a publish inside a traced request (a
// cqrs.EventBus's too: it puts its ctx in the message) is linked to by the
// relay's send span and continued by the consumers. The message itself is
// not changed.
func (p *Publisher) Publish(topic string, messages ...*message.Message) error {
	return p.publish(callerTx{}, topic, messages)
}

// WithTx returns a message.Publisher bound to tx: every Publish on it inserts
// under tx, whatever the messages' context says. If tx rolls back, so do the
// messages. Its Publish returns ErrNoTransaction for a nil tx and an error
// wrapping sql.ErrTxDone (for a pgx.Tx, pgx.ErrTxClosed) for a finished
// one. Closing it only ends that binding: it neither commits nor rolls back
// tx, and the Publisher stays open.
//
// Libraries built on database/sql hand out their *sql.Tx: sqlx's Tx and
// bun's Tx embed it (tx.Tx), gorm's is db.Statement.ConnPool.(*sql.Tx)
// inside a Transaction callback.
func (p *Publisher) WithTx(tx *sql.Tx) message.Publisher {
	return &txPublisher{p: p, tx: sqlCallerTx(tx)}
}

// WithPgxTx is WithTx for a pgx transaction (github.com/jackc/pgx/v5, also
// a pgxpool.Tx): every Publish on it inserts under tx. If tx rolls back, so
// do the messages.
func (p *Publisher) WithPgxTx(tx pgx.Tx) message.Publisher {
	return &txPublisher{p: p, tx: pgxCallerTx(tx)}
}

// Close makes later Publish calls fail with ErrClosed, after waiting for the
// ones in progress. It is idempotent and never closes the *sql.DB.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

// txPublisher is the message.Publisher Publisher.WithTx and WithPgxTx
// return, bound to one transaction.
type txPublisher struct {
	p      *Publisher
	tx     callerTx
	mu     sync.RWMutex
	closed bool
}

// Publish inserts messages under the bound transaction (see
// Publisher.WithTx).
func (b *txPublisher) Publish(topic string, messages ...*message.Message) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	if b.tx.q == nil {
		return ErrNoTransaction
	}
	return b.p.publish(b.tx, topic, messages)
}

// Close ends this binding; it neither commits nor rolls back the transaction.
func (b *txPublisher) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

func (p *Publisher) publish(caller callerTx, topic string, messages []*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	if err := ValidateTopic(topic); err != nil {
		return err
	}
	if len(messages) == 0 {
		return nil
	}
	args, err := p.insertArgs(topic, messages)
	if err != nil {
		return err
	}
	ctx := messages[0].Context()
	if caller.q == nil {
		caller, err = txOfMessages(messages)
		if err != nil {
			return err
		}
	}
	// Everything runs on the transaction's one connection, the dialect
	// check included: a Publish never waits for a second connection.
	if caller.q == nil {
		if !p.config.AutoCommit {
			return ErrNoTransaction
		}
		if err := inTx(ctx, p.store.db, func(t tx) error { return p.insert(ctx, t, args) }); err != nil {
			return err
		}
		p.tell(true)
		return nil
	}
	if err := p.insert(ctx, p.store.ownQueryer(caller.q), args); err != nil {
		return err
	}
	p.tell(false)
	return nil
}

func (p *Publisher) tell(committed bool) {
	if p.config.Notifier != nil {
		p.config.Notifier.Notify(committed)
	}
}

// notifyDue decides whether this Publish sends a NOTIFY, and claims the
// window if so.
//
// Why coalesce: PostgreSQL serialises the commits of all transactions that
// sent a NOTIFY (one lock on the notification queue, held through the
// commit), so a NOTIFY in every transaction caps the writers' throughput.
// With at most one per half NotifyInterval, notifying commits are rare
// enough not to queue behind each other, and the others never wait at all.
//
// What a skipped transaction costs: it relies on the NOTIFY of the one that
// claimed the window. The relay, once woken by that commit, looks again
// one NotifyInterval later (forwarder.Subscriber). The window is half that
// interval so that a skipped transaction has the other half to commit
// before the relay looks: with a window as long as the interval, the
// transactions that published just before it closed committed just after
// the look, and waited for a later NOTIFY or, once the writers went quiet,
// a whole poll (measured at 200 commits/s and 5 ms: about a third of the
// rows 5–10 ms late). One that commits later still, or whose notifying
// transaction rolled back, is found by the next NOTIFY or, on a quiet
// table, by the next poll.
func (p *Publisher) notifyDue() bool {
	if p.notifyQuery == "" {
		return false
	}
	now := time.Now().UnixNano()
	last := p.lastNotify.Load()
	if now-last < int64(p.outbox.NotifyInterval/2) {
		return false
	}
	return p.lastNotify.CompareAndSwap(last, now)
}

// txOfMessages returns the transaction the messages' contexts carry; they
// must all carry the same one, or none.
func txOfMessages(messages []*message.Message) (callerTx, error) {
	first := txFromContext(messages[0].Context())
	for _, m := range messages[1:] {
		if tx := txFromContext(m.Context()); tx.id != first.id {
			return callerTx{}, errors.New("outbox: messages of one Publish carry different transactions")
		}
	}
	return first, nil
}

// insertArgs validates every message and returns the INSERT arguments, five
// per message, before any SQL runs: a bad message writes nothing.
func (p *Publisher) insertArgs(topic string, messages []*message.Message) ([]any, error) {
	args := make([]any, 0, 5*len(messages))
	for _, m := range messages {
		if m == nil {
			return nil, errors.New("outbox: nil message")
		}
		if m.UUID == "" {
			return nil, errors.New("outbox: message without UUID")
		}
		if max := p.outbox.MaxPayloadBytes; max > 0 && len(m.Payload) > max {
			return nil, fmt.Errorf("%w: message %s has %d bytes, the limit is %d", ErrPayloadTooLarge, m.UUID, len(m.Payload), max)
		}
		if err := validatePartitionKey(m.Metadata.Get(PartitionKeyMetadataKey)); err != nil {
			return nil, fmt.Errorf("message %s: %w", m.UUID, err)
		}
		if err := checkMetadata(m.UUID, m.Metadata, p.forbidden, 0); err != nil {
			return nil, err
		}
		meta := withTraceContext(m.Context(), m.Metadata)
		if err := checkMetadata(m.UUID, meta, nil, p.outbox.MaxMetadataBytes); err != nil {
			return nil, err // the trace context counts towards the limit
		}
		md := []byte("{}")
		if len(meta) > 0 {
			var err error
			if md, err = json.Marshal(meta); err != nil {
				return nil, fmt.Errorf("outbox: marshal metadata of message %s: %w", m.UUID, err)
			}
		}
		var key any // NULL: no order promise
		if k := m.Metadata.Get(PartitionKeyMetadataKey); k != "" {
			key = k
		}
		payload := []byte(m.Payload)
		if payload == nil {
			payload = []byte{} // NOT NULL column; an empty payload is valid
		}
		args = append(args, m.UUID, topic, key, payload, string(md))
	}
	return args, nil
}

// traceParentKey is the W3C trace context's metadata key.
const traceParentKey = "traceparent"

// propagatorKey carries, in a context, the propagator that writes the
// trace context of the messages published with it: the EventBus's
// Propagator.
type propagatorKey struct{}

// withTraceContext returns md plus the trace context of ctx, when md has
// no traceparent of its own and ctx carries a valid span: written by the
// propagator ctx carries (an EventBus's Propagator), else as W3C trace
// context (traceparent, tracestate). So any message.Publisher user's
// trace, a cqrs.EventBus's included (it copies its ctx into the message),
// reaches the relay, whose send span links to it, and the broker's
// consumers, which continue it. md itself is not changed. It is the one
// place a trace context is written: Publish calls it for every message,
// the EventBus for the messages it hands to its publisher.
func withTraceContext(ctx context.Context, md message.Metadata) message.Metadata {
	if md.Get(traceParentKey) != "" || !trace.SpanContextFromContext(ctx).IsValid() {
		return md
	}
	p, ok := ctx.Value(propagatorKey{}).(propagation.TextMapPropagator)
	if !ok {
		p = propagation.TraceContext{}
	}
	out := make(message.Metadata, len(md)+2)
	maps.Copy(out, md)
	p.Inject(ctx, metadataCarrier(out))
	return out
}

func (p *Publisher) insert(ctx context.Context, tx queryer, args []any) error {
	if err := p.store.checkDialectOn(ctx, tx); err != nil {
		return err
	}
	for len(args) > 0 {
		n := min(len(args)/5, maxRowsPerInsert)
		if _, err := tx.exec(ctx, p.insertQuery(n), args[:5*n]...); err != nil {
			return fmt.Errorf("outbox: insert into %s: %w", p.table.name, err)
		}
		args = args[5*n:]
	}
	if p.notifyDue() {
		// Inside the transaction: PostgreSQL delivers it on commit, when the
		// rows are visible, and drops it on rollback.
		if _, err := tx.exec(ctx, p.notifyQuery); err != nil {
			p.lastNotify.Store(0) // the next Publish tries again
			return fmt.Errorf("outbox: notify: %w", err)
		}
	}
	return nil
}

func (p *Publisher) insertQuery(rows int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(p.table.quoted)
	b.WriteString(" (uuid, topic, partition_key, payload, metadata) VALUES ")
	for r := 0; r < rows; r++ {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := 1; c <= 5; c++ {
			if c > 1 {
				b.WriteByte(',')
			}
			b.WriteString(p.table.p(5*r + c))
		}
		b.WriteByte(')')
	}
	return b.String()
}

// ValidateTopic accepts a non-empty topic of at most 255 bytes of valid UTF-8
// without whitespace or control characters; anything else is ErrInvalidTopic.
// Whether the broker accepts the name is the broker's call: a topic it
// rejects dead-letters at relay time with the broker's error.
func ValidateTopic(topic string) error {
	switch {
	case topic == "":
		return fmt.Errorf("%w: empty", ErrInvalidTopic)
	case len(topic) > maxTopicLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidTopic, len(topic), maxTopicLen)
	case !utf8.ValidString(topic):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidTopic, topic)
	case strings.IndexFunc(topic, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("%w: %q contains whitespace or control characters", ErrInvalidTopic, topic)
	}
	return nil
}
