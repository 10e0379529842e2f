package sink

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/retry"
	watermilloutbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Kafka defaults.
const (
	// kafkaRetryMax and kafkaRetryBackoff ride out a leader election
	// (typically a few seconds) before Publish fails and the relay's own
	// backoff takes over.
	kafkaRetryMax     = 10
	kafkaRetryBackoff = 250 * time.Millisecond
)

// defaultKafkaVersion is the Kafka protocol version used when
// KafkaConfig.Version is zero: 3.6, the newest sarama v1.43 knows.
var defaultKafkaVersion = sarama.V3_6_0_0

// minKafkaVersion is the first version with the idempotent producer.
var minKafkaVersion = sarama.V0_11_0_0

// KafkaConfig configures NewKafkaPublisher.
type KafkaConfig struct {
	// Brokers are the bootstrap brokers, "host:port". Required.
	Brokers []string

	// Version is the Kafka protocol version the producer speaks. It must be
	// at most the version of the oldest broker in the cluster, and at least
	// 0.11 (idempotent producer). Sarama does not negotiate it: it is used
	// as given. Default 3.6 (sarama.V3_6_0_0, the newest sarama v1.43 knows); the zero value means the
	// default. Ignored when OverwriteSaramaConfig is set.
	Version sarama.KafkaVersion

	// ClientID identifies the producer in broker logs and quotas. Default
	// DefaultKafkaClientID ("watermill-outbox"); empty means the default.
	// Ignored when OverwriteSaramaConfig is set.
	ClientID string

	// MaxMessageBytes is the largest message the producer sends, in bytes
	// (sarama's Producer.MaxMessageBytes); a larger one fails to publish. It
	// should not exceed the broker's message.max.bytes. Default
	// DefaultKafkaMaxMessageBytes (1 MiB); zero means the default. Ignored
	// when OverwriteSaramaConfig is set.
	MaxMessageBytes int

	// Timeout is how long the broker waits for the in-sync replicas to
	// acknowledge a write (sarama's Producer.Timeout), and the dial and write
	// timeout of a connection. Millisecond resolution. Default
	// DefaultKafkaTimeout (10s); zero means the default. Ignored when
	// OverwriteSaramaConfig is set.
	Timeout time.Duration

	// OverwriteSaramaConfig, if set, is used instead of the config built
	// from the fields above (see NewKafkaSaramaConfig, a good starting
	// point). Validate rejects it unless Producer.RequiredAcks is
	// WaitForAll, Net.MaxOpenRequests is 1, Producer.Idempotent is false
	// and Producer.Return.Successes is true: anything else can lose or
	// reorder a message the broker acknowledged (see NewKafkaSaramaConfig
	// for why not idempotent). Its Producer.Partitioner must map equal keys to equal
	// partitions, or per-key order is lost. Optional; nil means
	// NewKafkaSaramaConfig(config).
	OverwriteSaramaConfig *sarama.Config
}

func (c *KafkaConfig) setDefaults() {
	if c.Version == (sarama.KafkaVersion{}) {
		c.Version = defaultKafkaVersion
	}
	if c.ClientID == "" {
		c.ClientID = DefaultKafkaClientID
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultKafkaMaxMessageBytes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultKafkaTimeout
	}
}

// Validate reports whether c, with defaults applied, is usable and safe for
// the outbox.
func (c KafkaConfig) Validate() error {
	c.setDefaults()

	if len(c.Brokers) == 0 {
		return errors.New("missing brokers")
	}
	for _, b := range c.Brokers {
		if strings.TrimSpace(b) == "" {
			return errors.New("empty broker address")
		}
	}

	saramaConfig := c.OverwriteSaramaConfig
	if saramaConfig != nil {
		if saramaConfig.Producer.RequiredAcks != sarama.WaitForAll {
			return fmt.Errorf("OverwriteSaramaConfig: Producer.RequiredAcks is %d, must be WaitForAll (%d): fewer acks can lose acknowledged messages",
				saramaConfig.Producer.RequiredAcks, sarama.WaitForAll)
		}
		if saramaConfig.Net.MaxOpenRequests != 1 {
			return fmt.Errorf("OverwriteSaramaConfig: Net.MaxOpenRequests is %d, must be 1: a retry could overtake an earlier message of its partition",
				saramaConfig.Net.MaxOpenRequests)
		}
		if saramaConfig.Producer.Idempotent {
			return errors.New("OverwriteSaramaConfig: Producer.Idempotent must be false: sarama's idempotent producer lost acknowledged messages across a broker restart (see NewKafkaSaramaConfig)")
		}
		if !saramaConfig.Producer.Return.Successes {
			return errors.New("OverwriteSaramaConfig: Producer.Return.Successes must be true for a synchronous producer")
		}
	} else {
		if !c.Version.IsAtLeast(minKafkaVersion) {
			return fmt.Errorf("Version %s is older than %s, the first with the idempotent producer", c.Version, minKafkaVersion)
		}
		if c.MaxMessageBytes < 0 {
			return fmt.Errorf("MaxMessageBytes must not be negative, got %d", c.MaxMessageBytes)
		}
		if c.Timeout < time.Millisecond {
			return fmt.Errorf("Timeout must be at least 1ms, got %s", c.Timeout)
		}
		saramaConfig = NewKafkaSaramaConfig(c)
	}

	if err := saramaConfig.Validate(); err != nil {
		return fmt.Errorf("sarama config: %w", err)
	}
	return nil
}

// NewKafkaSaramaConfig returns the producer config NewKafkaPublisher uses
// when KafkaConfig.OverwriteSaramaConfig is nil (zero fields take their
// defaults; Brokers and OverwriteSaramaConfig are not read):
//
//   - Producer.RequiredAcks = WaitForAll: a write is acknowledged only once
//     all in-sync replicas have it.
//   - Producer.Idempotent off. With it on, a broker SIGKILLed and restarted
//     mid-drain lost 1 to 4 acknowledged messages in 3 of 4 runs of the
//     fault suite's TestBrokerOutageKafka on Apache Kafka 4.1 (the broker
//     logged "Invalid sequence number for new epoch" after sarama bumped the
//     producer epoch on its own): a batch sarama numbered again after that
//     bump can be taken for a duplicate and acknowledged unwritten. Without
//     it a retry may write a message twice (the outbox's duplicates carry
//     their UUID), never lose it.
//   - Net.MaxOpenRequests = 1, so a retry can never overtake an earlier
//     message of the same partition.
//   - Producer.Retry.Max = 10 with a 250ms backoff.
//   - Producer.Return.Successes and Errors, for the synchronous producer.
//   - Producer.Partitioner = sarama.NewHashPartitioner: a non-nil key goes
//     to partition FNV-1a(key) mod partitions, a nil key to a random one.
//     This is sarama's hash, not the Java client's murmur2: the same key may
//     land on a different partition than a Java producer would put it on.
//
// Change a copy and pass it as OverwriteSaramaConfig to tune further.
func NewKafkaSaramaConfig(config KafkaConfig) *sarama.Config {
	config.setDefaults()

	c := sarama.NewConfig()
	c.Version = config.Version
	c.ClientID = config.ClientID

	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = false
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = kafkaRetryMax
	c.Producer.Retry.Backoff = kafkaRetryBackoff
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Partitioner = sarama.NewHashPartitioner
	c.Producer.MaxMessageBytes = config.MaxMessageBytes

	c.Producer.Timeout = config.Timeout
	c.Net.DialTimeout = config.Timeout
	c.Net.WriteTimeout = config.Timeout
	// The broker may hold a produce request for up to Producer.Timeout
	// before answering, so the read deadline must be longer.
	c.Net.ReadTimeout = 2 * config.Timeout

	return c
}

// KafkaPublisher is a watermill-kafka publisher configured for the outbox,
// which connects on first use and marks its errors for
// retry.DefaultClassifier, so the relay knows whether to charge the row,
// dead-letter it or pause. It is safe for concurrent use.
//
//   - Permanent (the message itself is unacceptable): ErrMessageSizeTooLarge,
//     ErrMessageSetSizeTooLarge (RECORD_LIST_TOO_LARGE), ErrInvalidRecord,
//     ErrInvalidTopic, sarama's own "Attempt to produce message larger than
//     configured Producer.MaxMessageBytes", and watermill-kafka's "cannot
//     marshal message …" (its marshaler fails only on the message).
//   - Unavailable (no row is to blame): ErrOutOfBrokers, ErrNotConnected,
//     ErrClosedClient, ErrShuttingDown, ErrBrokerNotAvailable,
//     ErrLeaderNotAvailable, ErrNotLeaderForPartition,
//     ErrReplicaNotAvailable, ErrRequestTimedOut, ErrNetworkException,
//     ErrNotEnoughReplicas(AfterAppend), ErrKafkaStorageError, and the
//     idempotent producer's session errors ErrOutOfOrderSequenceNumber,
//     ErrUnknownProducerID, ErrInvalidProducerEpoch, ErrProducerFenced,
//     ErrInvalidProducerIDMapping; sarama's "circuit breaker is open" (three
//     failed metadata lookups in a row) and "message out of sequence added
//     to a batch" (the idempotent producer's state after another message's
//     failure); watermill-kafka's "publisher closed".
//   - A sarama.ProducerErrors batch: Permanent if any element is,
//     Unavailable if all are, unmarked (Transient) otherwise.
//   - Everything else is left unmarked, so Transient: among them errors an
//     operator can fix while rows wait, such as ErrTopicAuthorizationFailed
//     and ErrUnknownTopicOrPartition.
//
// Kafka rejects a record batch as a whole, and sarama batches concurrent
// sends to one partition up to Producer.MaxMessageBytes: if that exceeds
// the topic's max.message.bytes, small messages sharing a batch with a
// large one are rejected as too large too. KafkaPublisher sends a message
// the broker refused as too large again alone before returning the error,
// so only the large one is marked Permanent. Keep Producer.MaxMessageBytes
// at or below the topic's limit (sarama then rejects a large message alone,
// before sending).
type KafkaPublisher struct {
	config       KafkaConfig
	saramaConfig *sarama.Config
	logger       watermill.LoggerAdapter

	mu      sync.Mutex
	pub     *kafka.Publisher // nil until connected
	closed  bool
	closing sync.WaitGroup // producers being closed after a reset

	// sending is held shared by every send, and exclusively by a send that
	// must be alone in its batch (see Publish).
	sending sync.RWMutex
}

// NewKafkaPublisher returns a Kafka publisher for the outbox. It validates
// config but does not connect: the first Publish does, so a relay starts
// while the brokers are down (its write side never needs them) and pauses
// until they answer. A Publish that cannot connect fails with a
// retry.UnavailableError, which charges no row an attempt.
//
// Publish sends the messages one by one and returns after the broker
// acknowledged each (see NewKafkaSaramaConfig), or on the first failure.
// A message the broker refused as too large is sent again alone before it
// fails (Kafka refuses a whole batch, and other messages may have shared
// it); one whose send broke the idempotent producer's session (out of order
// sequence number, unknown producer id, invalid epoch, fenced: none of them
// written) is sent once more through a new producer.
// Each message becomes a record with:
//
//   - key: the PartitionKeyMetadataKey metadata value. A message without it
//     (or with an empty value) gets a null key and a random partition, so
//     keyless messages spread over the partitions; an empty-string key
//     would hash them all onto one.
//   - headers: every metadata entry, plus "_watermill_message_uuid" with
//     the message UUID (metadata of that name is rejected).
//   - value: the payload, unchanged.
//
// Errors are marked for retry.DefaultClassifier (see KafkaPublisher): a
// message the broker can never take is Permanent, an unreachable or
// leaderless cluster Unavailable. A topic that is not a legal Kafka name
// fails with a retry.PermanentError before anything is sent: 1 to 249
// characters from [a-zA-Z0-9._-], and neither "." nor "..". After Close, Publish fails with an error wrapping
// watermilloutbox.ErrClosed.
func NewKafkaPublisher(config KafkaConfig, logger watermill.LoggerAdapter) (*KafkaPublisher, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	saramaConfig := config.OverwriteSaramaConfig
	if saramaConfig == nil {
		saramaConfig = NewKafkaSaramaConfig(config)
	}
	return &KafkaPublisher{config: config, saramaConfig: saramaConfig, logger: logger}, nil
}

// Publish publishes msgs to topic; see NewKafkaPublisher.
func (p *KafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if err := p.publishOne(topic, msg); err != nil {
			return classifyKafkaError(err)
		}
	}
	return nil
}

// publishOne sends msg, again alone if the broker refused its batch as too
// large. Kafka refuses a record batch as a whole, and sarama batches
// concurrent sends to one partition: messages that shared a batch with one
// too large for the broker get its error. Sent again with no other send in
// flight, a message is alone in its batch and gets an answer of its own.
func (p *KafkaPublisher) publishOne(topic string, msg *message.Message) error {
	p.sending.RLock()
	err := p.send(topic, msg)
	p.sending.RUnlock()
	if err != nil && brokerTooLarge(err) {
		p.sending.Lock()
		err = p.send(topic, msg)
		p.sending.Unlock()
	}
	return err
}

// send sends msg through the producer. When the producer fails it in a way
// only a new producer recovers from (needsNewProducer: the broker did not
// write it), it is replaced and msg sent once more through the new one.
func (p *KafkaPublisher) send(topic string, msg *message.Message) error {
	var err error
	for try := 0; try < 2; try++ {
		var pub *kafka.Publisher
		if pub, err = p.connect(); err != nil {
			return err
		}
		if err = pub.Publish(topic, msg); err == nil || !needsNewProducer(err) {
			return err
		}
		p.reset(pub)
	}
	return err
}

// MessagingSystem returns "kafka", the OpenTelemetry messaging.system of
// this destination; the forwarder's send spans read it.
func (p *KafkaPublisher) MessagingSystem() string { return "kafka" }

// saramaBreakerOpen is the error of sarama's per-partition circuit breaker,
// which opens after three failed leader lookups and stays open for ten
// seconds, whatever the broker does meanwhile (it is not configurable).
const saramaBreakerOpen = "circuit breaker is open"

// producerSessionErrors mean the broker no longer accepts the idempotent
// producer's session (its id, epoch and per-partition sequence numbers):
// after a broker restart or a leader change, a batch sarama gave up on
// leaves a gap in a partition's sequence, and sarama's own recovery (a
// local epoch bump, sequences back to zero) races the batches still in
// flight on other partitions. A new producer starts a new session.
var producerSessionErrors = []error{
	sarama.ErrOutOfOrderSequenceNumber,
	sarama.ErrUnknownProducerID,
	sarama.ErrInvalidProducerEpoch,
	sarama.ErrProducerFenced,
	sarama.ErrInvalidProducerIDMapping,
}

// saramaOutOfSequence is sarama's own assertion when a retried message
// does not fit the sequence of its batch (after another message's failure).
const saramaOutOfSequence = "assertion failed: message out of sequence added to a batch"

// needsNewProducer reports whether err leaves the producer unusable, or
// slower to recover than a new one: its idempotent session is broken, or its
// circuit breaker is open. A broker back from an outage is then used as soon
// as it answers (the relay's own circuit paces the attempts), not up to ten
// seconds later when sarama's breaker would let a lookup through again.
// Measured in the Kafka outage of the fault suite (in-process broker):
// resumed 2.2s after the broker's return with the breaker, 0.13s with the
// reset.
func needsNewProducer(err error) bool {
	for _, target := range producerSessionErrors {
		if errors.Is(err, target) {
			return true
		}
	}
	return anyMessage(err, func(msg string) bool { return msg == saramaBreakerOpen || msg == saramaOutOfSequence })
}

// reset drops a producer needsNewProducer condemned, so the next Publish
// dials a new one.
func (p *KafkaPublisher) reset(pub *kafka.Publisher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub != pub {
		return // reset already
	}
	p.pub = nil
	p.closing.Add(1)
	go func() {
		defer p.closing.Done()
		if err := pub.Close(); err != nil {
			p.logger.Debug("Close of a replaced Kafka producer: "+err.Error(), nil)
		}
	}()
}

// connect returns the connected publisher, dialling it first if need be.
func (p *KafkaPublisher) connect() (*kafka.Publisher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, retry.UnavailableError(fmt.Errorf("kafka publisher: %w", watermilloutbox.ErrClosed))
	}
	if p.pub != nil {
		return p.pub, nil
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               p.config.Brokers,
		Marshaler:             kafkaMarshaler{kafka.NewWithPartitioningMarshaler(kafkaPartitionKey)},
		OverwriteSaramaConfig: p.saramaConfig,
	}, p.logger)
	if err != nil {
		// Whatever stops the producer from starting is the cluster's state
		// (or its settings), never a message's.
		return nil, retry.UnavailableError(fmt.Errorf("connect to Kafka %s: %w", strings.Join(p.config.Brokers, ","), err))
	}
	p.pub = pub
	return pub, nil
}

// Close closes the producer, if it was connected. Later Publish calls fail
// with an error wrapping watermilloutbox.ErrClosed. Idempotent.
func (p *KafkaPublisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	pub := p.pub
	p.pub = nil
	p.mu.Unlock()
	var err error
	if pub != nil {
		err = pub.Close()
	}
	p.closing.Wait()
	return err
}

func kafkaPartitionKey(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(watermilloutbox.PartitionKeyMetadataKey), nil
}

// kafkaMarshaler is watermill-kafka's partitioning marshaler with one
// change: it always sets a key, and sarama hashes an empty one like any
// other, so a keyless message's key is reset to nil (random partition,
// null key on the wire).
type kafkaMarshaler struct {
	kafka.Marshaler
}

func (m kafkaMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	if err := validateKafkaTopic(topic); err != nil {
		return nil, retry.PermanentError(err)
	}
	kafkaMsg, err := m.Marshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	if msg.Metadata.Get(watermilloutbox.PartitionKeyMetadataKey) == "" {
		kafkaMsg.Key = nil
	}
	return kafkaMsg, nil
}

// maxKafkaTopicLen is Kafka's limit on topic names, in bytes.
const maxKafkaTopicLen = 249

// validateKafkaTopic reports whether topic is a legal Kafka topic name: 1 to
// 249 characters from [a-zA-Z0-9._-], and neither "." nor "..". The Kafka
// publisher checks every message's topic with it and fails an illegal one
// with a retry.PermanentError, so the row goes dead at once with this
// error: sent to the broker, it would fail every attempt, and its metadata
// lookups would trip sarama's circuit breaker for the good messages too.
func validateKafkaTopic(topic string) error {
	switch {
	case topic == "":
		return errors.New("illegal Kafka topic name: empty")
	case topic == "." || topic == "..":
		return fmt.Errorf("illegal Kafka topic name %q", topic)
	case len(topic) > maxKafkaTopicLen:
		return fmt.Errorf("illegal Kafka topic name: %d characters, at most %d", len(topic), maxKafkaTopicLen)
	}
	for _, c := range []byte(topic) {
		legal := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !legal {
			return fmt.Errorf("illegal Kafka topic name %q: only letters, digits, '.', '_' and '-' are allowed", topic)
		}
	}
	return nil
}
