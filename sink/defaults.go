package sink

import (
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Defaults of AMQPConfig and KafkaConfig, for their zero fields.
const (
	// DefaultAMQPTopology is the topology used when AMQPConfig.Topology is
	// zero.
	DefaultAMQPTopology = TopologyQueue

	// DefaultAMQPExchange is the exchange TopologyExchange publishes to.
	DefaultAMQPExchange = "watermill_outbox"

	// DefaultAMQPExchangeType is the type of the exchange TopologyExchange
	// declares.
	DefaultAMQPExchangeType = amqp.ExchangeTopic

	// DefaultAMQPChannelPoolSize is how many channels publish concurrently.
	DefaultAMQPChannelPoolSize = 16

	// DefaultKafkaClientID is the client id the producer sends to brokers.
	DefaultKafkaClientID = "watermill-outbox"

	// DefaultKafkaMaxMessageBytes is the largest message the producer
	// sends: 1 MiB, the broker's default message.max.bytes.
	DefaultKafkaMaxMessageBytes = 1 << 20

	// DefaultKafkaTimeout bounds each broker round trip.
	DefaultKafkaTimeout = 10 * time.Second
)
