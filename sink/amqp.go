package sink

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/e0a82c8c/watermill-outbox/retry"
	watermilloutbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// errClosed is what Publish returns after Close.
var errClosed = retry.UnavailableError(fmt.Errorf("amqp publisher: %w", watermilloutbox.ErrClosed))

// Topology is where an AMQPPublisher sends a topic's messages, and what it
// declares for them.
type Topology int

const (
	// TopologyQueue publishes to the default exchange with routing key =
	// topic, which delivers to the durable queue named after the topic.
	TopologyQueue Topology = iota + 1

	// TopologyExchange publishes to AMQPConfig.Exchange with routing key =
	// topic, and binds a durable queue named after the topic to it with
	// that routing key. Consumers may bind more queues to the exchange.
	TopologyExchange
)

// String returns the topology's name.
func (t Topology) String() string {
	switch t {
	case TopologyQueue:
		return "queue"
	case TopologyExchange:
		return "exchange"
	default:
		return fmt.Sprintf("Topology(%d)", int(t))
	}
}

// AMQP defaults.
// AMQPConfig configures NewAMQPPublisher.
type AMQPConfig struct {
	// URL is the broker, "amqp://user:pass@host:port/vhost" or amqps://.
	// Required.
	URL string

	// Topology selects where messages go and what is declared for them.
	// Default DefaultAMQPTopology (TopologyQueue); zero means the default.
	Topology Topology

	// Exchange is the exchange TopologyExchange publishes to; declared
	// durable. Must not start with "amq." (reserved). Default
	// DefaultAMQPExchange ("watermill_outbox"); empty means the default.
	// Unused with TopologyQueue.
	Exchange string

	// ExchangeType is the type Exchange is declared with: "topic" or
	// "direct" (both route by routing key = topic; "fanout" and "headers"
	// would deliver every topic to every bound queue, so they are
	// rejected). With "topic", topics must not contain the wildcards '*' or
	// '#'. An existing exchange must have this type. Default
	// DefaultAMQPExchangeType ("topic"); empty means the default. Unused
	// with TopologyQueue.
	ExchangeType string

	// ChannelPoolSize is how many AMQP channels the publisher publishes
	// on; concurrent Publish calls take them round robin and share them,
	// each with its confirms outstanding. More channels let RabbitMQ use
	// more cores. Default DefaultAMQPChannelPoolSize (16); zero means the
	// default.
	ChannelPoolSize int

	// QueueArguments are the arguments queues are declared with, for
	// example amqp.Table{"x-queue-type": "quorum"}. An existing queue must
	// have been declared with the same ones, or the broker refuses the
	// declaration and Publish fails. Optional; nil declares a queue of the
	// broker's default type.
	QueueArguments amqp.Table

	// TLSConfig is used for amqps:// URLs. Optional; nil means the system
	// roots and the URL's host name.
	TLSConfig *tls.Config
}

func (c *AMQPConfig) setDefaults() {
	if c.Topology == 0 {
		c.Topology = DefaultAMQPTopology
	}
	if c.Exchange == "" {
		c.Exchange = DefaultAMQPExchange
	}
	if c.ExchangeType == "" {
		c.ExchangeType = DefaultAMQPExchangeType
	}
	if c.ChannelPoolSize == 0 {
		c.ChannelPoolSize = DefaultAMQPChannelPoolSize
	}
}

// Validate reports whether c, with defaults applied, is usable.
func (c AMQPConfig) Validate() error {
	c.setDefaults()

	if strings.TrimSpace(c.URL) == "" {
		return errors.New("missing URL")
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return fmt.Errorf("URL: %w", urlProblem(err))
	}
	switch c.Topology {
	case TopologyQueue:
	case TopologyExchange:
		if strings.HasPrefix(c.Exchange, "amq.") {
			return fmt.Errorf("Exchange %q: names starting with \"amq.\" are reserved", c.Exchange)
		}
		if c.ExchangeType != amqp.ExchangeTopic && c.ExchangeType != amqp.ExchangeDirect {
			return fmt.Errorf("ExchangeType %q: must be %q or %q", c.ExchangeType, amqp.ExchangeTopic, amqp.ExchangeDirect)
		}
	default:
		return fmt.Errorf("unknown Topology %s", c.Topology)
	}
	if c.ChannelPoolSize < 0 {
		return fmt.Errorf("ChannelPoolSize must not be negative, got %d", c.ChannelPoolSize)
	}
	return nil
}

// marshaler turns a message into an AMQP publishing exactly as
// watermill-amqp's default marshaler does (persistent, metadata as headers,
// the UUID in "_watermill_message_uuid"), so Watermill subscribers read it
// back unchanged, plus MessageId = UUID for other consumers.
func marshaler() wamqp.DefaultMarshaler {
	return wamqp.DefaultMarshaler{
		PostprocessPublishing: func(p amqp.Publishing) amqp.Publishing {
			if id, ok := p.Headers[wamqp.DefaultMessageUUIDHeaderKey].(string); ok {
				p.MessageId = id
			}
			return p
		},
	}
}

// AMQPPublisher publishes to RabbitMQ with pipelined publisher confirms,
// declaring each topic's destination before the first publish to it. It is
// safe for concurrent use. It marks its errors for retry.DefaultClassifier:
//
//   - Permanent: codes 311 ContentTooLarge and 312 NoRoute, RabbitMQ's 406
//     "message size … is larger than … max size", its 403 for a name under
//     the reserved prefix "amq." ("… contains reserved prefix 'amq.*'"),
//     and "cannot marshal message …" (how watermill-amqp wraps a marshaler
//     error).
//   - Unavailable: amqp.ErrClosed and the connection-level codes 320
//     ConnectionForced, 501 FrameError (amqp091 reports a broken socket
//     so), 504 ChannelError, 505 UnexpectedFrame and 506 ResourceError;
//     watermill-amqp's "not connected to AMQP" and "pub/sub is connection
//     closedChan".
//   - Everything else is left unmarked, so Transient: among them errors an
//     operator can fix while rows wait (403 on a vhost or exchange for want
//     of a permission, 404 for a missing exchange, a 406 for queue arguments that differ) and a
//     broker's negative publisher confirm ("delivery not confirmed").
//
// With publisher confirms, RabbitMQ's 406 for an oversized message closes
// the channel and reaches the publisher only as "delivery not confirmed",
// which is Transient: such a message dies when its budget is spent.
//
// watermill-amqp's publisher (v2.1.3) is not used for the publishing
// itself: with ConfirmDelivery it waits for each message's confirm before
// sending the next, and holds its channel meanwhile, so throughput is one
// round trip per message and channel. Here every Publish sends all its
// messages, then waits for their confirms, and any number of Publish calls
// share a channel, each with its confirms outstanding.
type AMQPPublisher struct {
	config    AMQPConfig
	logger    watermill.LoggerAdapter
	marshaler wamqp.DefaultMarshaler
	exchange  string // "" for TopologyQueue: the default exchange

	// mu guards the connection, the channels and the set of declared
	// topics.
	mu       sync.Mutex
	conn     *amqp.Connection // nil until dialed
	ch       *amqp.Channel    // for declarations
	pool     []*amqp.Channel  // publishing channels in confirm mode, opened on demand
	next     int              // round robin over pool
	declared map[string]struct{}
	closed   bool
}

// NewAMQPPublisher returns a publisher for the outbox. It validates config
// but does not connect: the first Publish does (and every Publish after a
// lost connection), so a relay starts while RabbitMQ is down and pauses
// until it answers. A Publish that cannot connect fails with a
// retry.UnavailableError, which charges no row an attempt.
//
// Publish returns nil only after the broker confirmed every message:
// messages are persistent (delivery mode 2) and published with publisher
// confirms. A Publish sends all its messages in order on one channel, then
// waits for their confirms; concurrent Publish calls spread over
// ChannelPoolSize channels, many confirms outstanding on each. A nack, or a
// channel or connection closed before the confirm arrived, is an error. The
// wait has no deadline of its own; a dead connection is noticed by the AMQP
// heartbeat (10s by default).
//
// Before the first publish to a topic, Publish declares its durable queue
// (named after the topic) and, for TopologyExchange, the durable exchange
// and the binding, because without a queue RabbitMQ drops the message and
// still confirms it. Declarations are redone after a failed Publish or a
// lost connection; a queue deleted while the publisher keeps working is not
// noticed, and its messages are dropped until then.
//
// Each message carries its metadata as headers, its UUID in the
// "_watermill_message_uuid" header and as MessageId, and its payload as the
// body.
//
// A message whose properties and headers (its metadata) cannot fit in one
// frame of the size negotiated with the broker (frame_max, 128 KiB by
// default) is refused as Permanent before anything of its Publish call is
// sent: RabbitMQ would close the connection over it (501 FRAME_ERROR),
// failing the confirms of every message in flight on it.
//
// Errors are marked for retry.DefaultClassifier (see AMQPPublisher): a
// message RabbitMQ can never take is Permanent, a broker that cannot be
// reached, or refuses the connection, Unavailable. After Close, Publish
// fails with an error wrapping watermilloutbox.ErrClosed.
func NewAMQPPublisher(config AMQPConfig, logger watermill.LoggerAdapter) (*AMQPPublisher, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}

	p := &AMQPPublisher{
		config:    config,
		logger:    logger,
		marshaler: marshaler(),
		declared:  make(map[string]struct{}),
	}
	if config.Topology == TopologyExchange {
		p.exchange = config.Exchange
	}
	return p, nil
}

// MessagingSystem returns "rabbitmq", the OpenTelemetry messaging.system of
// this destination; the forwarder's send spans read it.
func (p *AMQPPublisher) MessagingSystem() string { return "rabbitmq" }

// Publish declares the topic's destination if needed, then publishes msgs
// in order and waits for the broker's confirms. See NewAMQPPublisher.
func (p *AMQPPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.declare(topic); err != nil {
		return classifyAMQPError(fmt.Errorf("declare topology of topic %q: %w", topic, err))
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := p.publish(topic, msgs); err != nil {
		// The destination may be gone with the connection: redeclare it
		// before the next attempt.
		p.forget(topic)
		return classifyAMQPError(err)
	}
	return nil
}

func (p *AMQPPublisher) publish(topic string, msgs []*message.Message) error {
	ch, conn, err := p.channel()
	if err != nil {
		return err
	}
	// Every message is checked before any is sent: a refused one must not
	// leave the others of the call half sent.
	pubs := make([]amqp.Publishing, len(msgs))
	for i, m := range msgs {
		pub, err := p.marshaler.Marshal(m)
		if err != nil {
			// The marshaler fails only on the message itself.
			return retry.PermanentError(fmt.Errorf("cannot marshal message %s: %w", m.UUID, err))
		}
		if err := fitsFrame(pub, conn.Config.FrameSize); err != nil {
			return retry.PermanentError(fmt.Errorf("message %s: %w", m.UUID, err))
		}
		pubs[i] = pub
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for i, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirm(p.exchange, topic, true, false, pubs[i])
		if err != nil {
			return fmt.Errorf("publish message %s: %w", m.UUID, err)
		}
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		if dc.Wait() {
			continue
		}
		if conn.IsClosed() {
			// The broker went away: no fault of the message.
			return fmt.Errorf("message %s not confirmed: %w", msgs[i].UUID, amqp.ErrClosed)
		}
		// A nack, or a channel the broker closed. The close may be due to
		// another message on the channel (RabbitMQ closes it on an
		// oversized one, failing all outstanding confirms), so the reason
		// is not passed on as this message's error.
		return fmt.Errorf("delivery not confirmed for message [%s]", msgs[i].UUID)
	}
	return nil
}

// channel returns a publishing channel, round robin, opening it (and the
// connection) if needed.
func (p *AMQPPublisher) channel() (*amqp.Channel, *amqp.Connection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, errClosed
	}
	if err := p.ensureConn(); err != nil {
		return nil, nil, err
	}
	i := p.next % len(p.pool)
	p.next++
	if ch := p.pool[i]; ch != nil && !ch.IsClosed() {
		return ch, p.conn, nil
	}
	ch, err := p.conn.Channel()
	if err != nil {
		return nil, nil, retry.UnavailableError(fmt.Errorf("open channel: %w", err))
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, nil, retry.UnavailableError(fmt.Errorf("enable publisher confirms: %w", err))
	}
	p.pool[i] = ch
	return ch, p.conn, nil
}

// Close closes the publisher and its connection. Publish calls waiting for
// confirms fail.
func (p *AMQPPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var err error
	if p.conn != nil && !p.conn.IsClosed() {
		if cerr := p.conn.Close(); cerr != nil {
			err = fmt.Errorf("close connection: %w", cerr)
		}
	}
	p.conn, p.ch, p.pool = nil, nil, nil
	return err
}

func (p *AMQPPublisher) declare(topic string) error {
	if topic == "" {
		return errors.New("empty topic")
	}
	if p.config.Topology == TopologyExchange && p.config.ExchangeType == amqp.ExchangeTopic &&
		strings.ContainsAny(topic, "*#") {
		return errors.New("topic contains a wildcard ('*' or '#'), which would bind the queue to other topics too")
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	if p.closed {
		return errClosed
	}
	if err := p.ensureConn(); err != nil {
		return err
	}
	if _, ok := p.declared[topic]; ok {
		return nil
	}
	if p.ch == nil || p.ch.IsClosed() {
		// A refused declaration closes the channel.
		ch, err := p.conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		p.ch = ch
	}

	if _, err := p.ch.QueueDeclare(topic, true, false, false, false, p.config.QueueArguments); err != nil {
		return fmt.Errorf("declare queue: %w", err)
	}
	if p.config.Topology == TopologyExchange {
		if err := p.ch.ExchangeDeclare(p.config.Exchange, p.config.ExchangeType, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %q: %w", p.config.Exchange, err)
		}
		if err := p.ch.QueueBind(topic, topic, p.config.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue to exchange %q: %w", p.config.Exchange, err)
		}
	}
	p.declared[topic] = struct{}{}
	p.logger.Debug("Declared AMQP topology", watermill.LogFields{
		"topic": topic, "topology": p.config.Topology.String(),
	})
	return nil
}

func (p *AMQPPublisher) forget(topic string) {
	p.mu.Lock()
	delete(p.declared, topic)
	p.mu.Unlock()
}

// ensureConn dials again when the connection is gone; p.mu must be held.
func (p *AMQPPublisher) ensureConn() error {
	if p.conn != nil && !p.conn.IsClosed() {
		return nil
	}
	// The broker may have restarted and lost what we declared.
	clear(p.declared)
	return p.connect()
}

// connect dials the connection and resets the channels; p.mu must be held
// or p not yet shared.
func (p *AMQPPublisher) connect() error {
	var (
		conn *amqp.Connection
		err  error
	)
	if p.config.TLSConfig != nil {
		conn, err = amqp.DialTLS(p.config.URL, p.config.TLSConfig)
	} else {
		conn, err = amqp.Dial(p.config.URL)
	}
	if err != nil {
		// Refused, unreachable or wrong credentials: the broker cannot be
		// used, and no message is to blame.
		return retry.UnavailableError(fmt.Errorf("connect to AMQP: %w", err))
	}
	p.conn, p.ch = conn, nil
	p.pool = make([]*amqp.Channel, p.config.ChannelPoolSize)
	return nil
}

// Sizes of the AMQP 0-9-1 framing around a content header's properties.
const (
	frameOverhead  = 8  // frame type, channel, payload size, frame end
	headerFixedLen = 14 // class, weight, body size, property flags
)

// fitsFrame refuses a publishing whose content header frame would exceed
// the frame size negotiated with the broker (frameMax; 0: unlimited). The
// body is split over as many frames as it needs, but the header frame,
// which carries the properties and the headers (the message's metadata),
// cannot be split: RabbitMQ answers an oversized one with 501 FRAME_ERROR
// and closes the connection, failing the confirms of every message in
// flight on it.
func fitsFrame(p amqp.Publishing, frameMax int) error {
	if frameMax <= 0 {
		return nil
	}
	size := headerFixedLen + tableSize(p.Headers) + 1 + 1 + 8 // delivery mode, priority, timestamp
	for _, s := range []string{p.ContentType, p.ContentEncoding, p.CorrelationId, p.ReplyTo,
		p.Expiration, p.MessageId, p.Type, p.UserId, p.AppId} {
		size += 1 + len(s)
	}
	if limit := frameMax - frameOverhead; size > limit {
		return fmt.Errorf("metadata too large for RabbitMQ: its properties and headers take %d bytes encoded, "+
			"more than the %d bytes one frame holds (frame_max %d negotiated with the broker)", size, limit, frameMax)
	}
	return nil
}

// tableSize is the encoded size of an AMQP field table, as amqp091 writes
// it.
func tableSize(t amqp.Table) int {
	n := 4
	for k, v := range t {
		n += 1 + len(k) + fieldSize(v)
	}
	return n
}

// fieldSize is the encoded size of a field value with its type octet.
func fieldSize(v any) int {
	switch v := v.(type) {
	case nil:
		return 1
	case bool, byte, int8:
		return 2
	case int16:
		return 3
	case int, int32, float32:
		return 5
	case amqp.Decimal:
		return 6
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			n += fieldSize(e)
		}
		return n
	case amqp.Table:
		return 1 + tableSize(v)
	default: // int64, float64, time.Time; amqp091 refuses other types
		return 9
	}
}
