package sink

import (
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
	watermilloutbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const amqpConsumeTimeout = 15 * time.Second

// amqpConn is the test's own connection to the broker, closed when t ends.
func amqpConn(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func amqpChannel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	require.NoError(t, err)
	return ch
}

// cleanupQueues deletes the queues (and exchange, if not empty) when t
// ends, after the publisher registered later is closed.
func cleanupQueues(t *testing.T, url, exchange string, queues ...string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		for _, q := range queues {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("cleanup: delete queue %q: %v", q, err)
				return
			}
		}
		if exchange != "" {
			if err := ch.ExchangeDelete(exchange, false, false); err != nil {
				t.Errorf("cleanup: delete exchange %q: %v", exchange, err)
			}
		}
	})
}

func newAMQPPublisher(t *testing.T, config AMQPConfig) *AMQPPublisher {
	t.Helper()
	pub, err := NewAMQPPublisher(config, watermill.NewStdLogger(false, false))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

func requireQueueMissing(t *testing.T, conn *amqp.Connection, queue string) {
	t.Helper()
	ch := amqpChannel(t, conn) // closed by the broker's 404
	_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	var amqpErr *amqp.Error
	require.ErrorAs(t, err, &amqpErr)
	require.Equal(t, amqp.NotFound, amqpErr.Code)
}

// consumeAMQP returns the first n deliveries of queue, failing t if they
// do not arrive within amqpConsumeTimeout.
func consumeAMQP(t *testing.T, conn *amqp.Connection, queue string, n int) []amqp.Delivery {
	t.Helper()
	ch := amqpChannel(t, conn)
	defer ch.Close()
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	require.NoError(t, err)

	timeout := time.After(amqpConsumeTimeout)
	var got []amqp.Delivery
	for len(got) < n {
		select {
		case d, ok := <-deliveries:
			require.True(t, ok, "consumer of %q closed after %d of %d messages", queue, len(got), n)
			got = append(got, d)
		case <-timeout:
			t.Fatalf("queue %q: got %d of %d messages within %s", queue, len(got), n, amqpConsumeTimeout)
		}
	}
	return got
}

func testMessages(n int, key string) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"n":`+strconv.Itoa(i)+`}`))
		msgs[i].Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, key)
		msgs[i].Metadata.Set(watermilloutbox.EventNameMetadataKey, "OrderPlaced")
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
	}
	return msgs
}

func requireDeliveries(t *testing.T, want []*message.Message, got []amqp.Delivery) {
	t.Helper()
	require.Len(t, got, len(want))
	for i, d := range got {
		msg := want[i]
		require.Equal(t, []byte(msg.Payload), d.Body, "message %d", i)
		require.Equal(t, msg.UUID, d.MessageId, "message %d", i)
		require.Equal(t, amqp.Persistent, d.DeliveryMode, "message %d", i)
		require.Len(t, d.Headers, len(msg.Metadata)+1, "headers: metadata and the UUID")
		require.Equal(t, msg.UUID, d.Headers[wamqp.DefaultMessageUUIDHeaderKey])
		for k, v := range msg.Metadata {
			require.Equal(t, v, d.Headers[k], "message %d header %q", i, k)
		}
	}
}

// requireDurableQueue passes only for a durable queue: RabbitMQ refuses to
// redeclare a queue with a different durability (406 PRECONDITION_FAILED).
func requireDurableQueue(t *testing.T, conn *amqp.Connection, queue string, wantMessages int) {
	t.Helper()
	ch := amqpChannel(t, conn)
	defer ch.Close()
	q, err := ch.QueueDeclare(queue, true, false, false, false, nil)
	require.NoError(t, err, "queue %q is not durable", queue)
	require.Equal(t, wantMessages, q.Messages)
}

func TestAMQPPublisher_TopologyQueue(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	topic := testenv.TableName(t)
	conn := amqpConn(t, url)
	cleanupQueues(t, url, "", topic)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url})

	requireQueueMissing(t, conn, topic)
	msgs := testMessages(3, "order-1")
	require.NoError(t, pub.Publish(topic, msgs[:2]...))
	require.NoError(t, pub.Publish(topic, msgs[2:]...))

	// The broker confirmed all three, so they are in the queue now.
	requireDurableQueue(t, conn, topic, len(msgs))
	requireDeliveries(t, msgs, consumeAMQP(t, conn, topic, len(msgs)))
}

func TestAMQPPublisher_TopologyExchange(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	exchange := testenv.TableName(t)
	topicA, topicB := testenv.TableName(t)+".a", testenv.TableName(t)+".b"
	conn := amqpConn(t, url)
	cleanupQueues(t, url, exchange, topicA, topicB)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url, Topology: TopologyExchange, Exchange: exchange})

	requireQueueMissing(t, conn, topicA)
	msgsA, msgsB := testMessages(2, "a"), testMessages(1, "b")
	require.NoError(t, pub.Publish(topicA, msgsA...))
	require.NoError(t, pub.Publish(topicB, msgsB...))

	requireDurableQueue(t, conn, topicA, len(msgsA))
	requireDurableQueue(t, conn, topicB, len(msgsB)) // routing keys kept the topics apart
	ch := amqpChannel(t, conn)
	require.NoError(t, ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil),
		"exchange is not a durable topic exchange")

	requireDeliveries(t, msgsA, consumeAMQP(t, conn, topicA, len(msgsA)))
	requireDeliveries(t, msgsB, consumeAMQP(t, conn, topicB, len(msgsB)))
}

func TestAMQPPublisher_RedeclaresAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	topic := testenv.TableName(t)
	conn := amqpConn(t, url)
	cleanupQueues(t, url, "", topic)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url})

	first := testMessages(1, "k")
	require.NoError(t, pub.Publish(topic, first...))
	requireDeliveries(t, first, consumeAMQP(t, conn, topic, 1))

	// A broker that lost its queues: the queue is gone and the publisher's
	// declaration connection dropped.
	ch := amqpChannel(t, conn)
	_, err := ch.QueueDelete(topic, false, false, false)
	require.NoError(t, err)
	pub.mu.Lock()
	require.NoError(t, pub.conn.Close())
	pub.mu.Unlock()

	second := testMessages(2, "k")
	require.NoError(t, pub.Publish(topic, second...))
	requireDeliveries(t, second, consumeAMQP(t, conn, topic, len(second)))
}

func TestAMQPPublisher_RefusedDeclarationFailsPublish(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	topic := testenv.TableName(t)
	conn := amqpConn(t, url)
	cleanupQueues(t, url, "", topic)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url})

	// A non-durable queue of the same name: the durable declaration is
	// refused, so nothing may be published.
	ch := amqpChannel(t, conn)
	_, err := ch.QueueDeclare(topic, false, false, false, false, nil)
	require.NoError(t, err)

	err = pub.Publish(topic, testMessages(1, "k")...)
	var amqpErr *amqp.Error
	require.ErrorAs(t, err, &amqpErr)
	require.Equal(t, amqp.PreconditionFailed, amqpErr.Code)
	q, err := ch.QueueDeclarePassive(topic, false, false, false, false, nil)
	require.NoError(t, err)
	require.Zero(t, q.Messages)

	// Once the conflict is gone, the publisher recovers on a new channel.
	_, err = ch.QueueDelete(topic, false, false, false)
	require.NoError(t, err)
	msgs := testMessages(1, "k")
	require.NoError(t, pub.Publish(topic, msgs...))
	requireDeliveries(t, msgs, consumeAMQP(t, conn, topic, 1))
}

func TestAMQPPublisher_PublishAfterClose(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	pub, err := NewAMQPPublisher(AMQPConfig{URL: url}, nil)
	require.NoError(t, err)
	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close(), "second Close")
	err = pub.Publish(testenv.TableName(t), testMessages(1, "k")...)
	require.ErrorIs(t, err, watermilloutbox.ErrClosed)
	require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err))
}

// TestAMQPPublisher_StartsWhileBrokerIsDown: the constructor does not
// connect; a publish to a broker that does not answer (or refuses the
// credentials) fails as Unavailable, charging no row, and the publisher is
// usable (TestAMQPPublisher_RedeclaresAfterConnectionLoss: it reconnects).
func TestAMQPPublisher_StartsWhileBrokerIsDown(t *testing.T) {
	t.Parallel()
	pub, err := NewAMQPPublisher(AMQPConfig{URL: "amqp://guest:guest@127.0.0.1:1/"}, nil)
	require.NoError(t, err, "no connection at construction")
	t.Cleanup(func() { _ = pub.Close() })
	err = pub.Publish("orders", testMessages(1, "k")...)
	require.ErrorContains(t, err, "connect to AMQP")
	require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err))

	url := testenv.AMQPURL(t)
	u, err := amqp.ParseURI(url)
	require.NoError(t, err)
	u.Password = "wrong-" + u.Password
	badAuth, err := NewAMQPPublisher(AMQPConfig{URL: u.String()}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = badAuth.Close() })
	err = badAuth.Publish("orders", testMessages(1, "k")...)
	require.Error(t, err)
	require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err), "refused credentials pause the relay, never dead-letter: %v", err)
}

func TestAMQPConfig_Validate(t *testing.T) {
	t.Parallel()
	const url = "amqp://guest:guest@127.0.0.1:5672/"

	tests := []struct {
		name    string
		config  AMQPConfig
		wantErr string
	}{
		{"defaults", AMQPConfig{URL: url}, ""},
		{"exchange defaults", AMQPConfig{URL: url, Topology: TopologyExchange}, ""},
		{"direct exchange", AMQPConfig{URL: url, Topology: TopologyExchange, ExchangeType: amqp.ExchangeDirect}, ""},
		{"empty URL", AMQPConfig{}, "missing URL"},
		{"bad URL", AMQPConfig{URL: "http://example.com"}, "URL"},
		{"unknown topology", AMQPConfig{URL: url, Topology: 7}, "Topology(7)"},
		{"fanout", AMQPConfig{URL: url, Topology: TopologyExchange, ExchangeType: amqp.ExchangeFanout}, "ExchangeType"},
		{"reserved exchange", AMQPConfig{URL: url, Topology: TopologyExchange, Exchange: "amq.topic"}, "reserved"},
		{"negative pool", AMQPConfig{URL: url, ChannelPoolSize: -1}, "ChannelPoolSize"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			requireConfigCheck(t, tt.config, tt.wantErr, func(c AMQPConfig) error {
				_, err := NewAMQPPublisher(c, nil)
				return err
			})
		})
	}
}

func TestAMQPPublisher_RejectsBadTopics(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url, Topology: TopologyExchange, Exchange: testenv.TableName(t)})

	require.ErrorContains(t, pub.Publish("", testMessages(1, "k")...), "empty topic")
	require.ErrorContains(t, pub.Publish("orders.*", testMessages(1, "k")...), "wildcard")
}
