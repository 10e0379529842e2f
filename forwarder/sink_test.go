package forwarder_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// commitAndRollback writes committed events in one transaction per event
// and rolled-back ones that must never reach the broker.
func commitAndRollback(t *testing.T, e *relayEnv, topic string, committed, rolledBack int) (map[string]*message.Message, map[string]bool) {
	t.Helper()
	want := make(map[string]*message.Message)
	never := make(map[string]bool)
	for i := 0; i < committed+rolledBack; i++ {
		msg := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, i)))
		msg.Metadata.Set(outbox.PartitionKeyMetadataKey, fmt.Sprint("order-", i%5))
		msg.Metadata.Set("x-tenant", "acme")
		tx, err := e.db.Begin()
		require.NoError(t, err)
		require.NoError(t, e.pub.WithTx(tx).Publish(topic, msg))
		if i < committed {
			require.NoError(t, tx.Commit())
			want[msg.UUID] = msg
		} else {
			require.NoError(t, tx.Rollback())
			never[msg.UUID] = true
		}
	}
	return want, never
}

func TestEndToEndKafka(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		topic := "orders_" + e.table
		brokers := testenv.Kafka(t, topic)
		kafkaPub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: brokers}, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = kafkaPub.Close() })

		want, never := commitAndRollback(t, e, topic, 30, 5)
		runForwarder(t, e.store, kafkaPub, forwarder.Config{})

		records := testenv.ConsumeKafka(t, brokers, topic, len(want), 30*time.Second)
		lastPerKey := make(map[string]int)
		for _, r := range records {
			headers := make(map[string]string)
			for _, h := range r.Headers {
				headers[h.Key] = string(h.Value)
			}
			uuid := headers["_watermill_message_uuid"]
			require.False(t, never[uuid], "a rolled-back event reached the broker")
			w := want[uuid]
			require.NotNil(t, w, "unexpected record %q", uuid)
			require.Equal(t, []byte(w.Payload), r.Value)
			require.Equal(t, w.Metadata.Get(outbox.PartitionKeyMetadataKey), string(r.Key), "partition key is the Kafka key")
			require.Equal(t, "acme", headers["x-tenant"])
			for _, k := range []string{outbox.OutboxIDMetadataKey, outbox.AttemptMetadataKey, outbox.TopicMetadataKey} {
				require.NotContains(t, headers, k, "relay metadata stays out of the broker")
			}
			// Per key (one partition each), records keep the written order.
			var n int
			_, _ = fmt.Sscanf(string(r.Value), `{"order":%d}`, &n)
			key := string(r.Key)
			if prev, ok := lastPerKey[key]; ok {
				require.Greater(t, n, prev, "key %s out of order", key)
			}
			lastPerKey[key] = n
			delete(want, uuid)
		}
		require.Empty(t, want)
	})
}

func TestEndToEndRabbitMQ(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		url := testenv.AMQPURL(t)
		topic := "orders_" + e.table
		amqpPub, err := sink.NewAMQPPublisher(sink.AMQPConfig{URL: url}, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = amqpPub.Close() })
		conn, err := amqp.Dial(url)
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		ch, err := conn.Channel()
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = ch.QueueDelete(topic, false, false, false) })

		want, never := commitAndRollback(t, e, topic, 30, 5)
		runForwarder(t, e.store, amqpPub, forwarder.Config{})

		// The sink declared the durable queue before the first publish.
		var deliveries <-chan amqp.Delivery
		waitFor(t, 30*time.Second, "queue declared", func() bool {
			c, err := conn.Channel()
			require.NoError(t, err)
			defer c.Close()
			_, err = c.QueueDeclarePassive(topic, true, false, false, false, nil)
			return err == nil
		})
		deliveries, err = ch.Consume(topic, "", true, false, false, false, nil)
		require.NoError(t, err)
		lastPerKey := make(map[string]int)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for len(want) > 0 {
			var d amqp.Delivery
			select {
			case d = <-deliveries:
			case <-ctx.Done():
				t.Fatalf("%d events not received", len(want))
			}
			uuid, _ := d.Headers["_watermill_message_uuid"].(string)
			require.False(t, never[uuid], "a rolled-back event reached the broker")
			w := want[uuid]
			require.NotNil(t, w, "unexpected delivery %q", uuid)
			require.Equal(t, []byte(w.Payload), d.Body)
			require.Equal(t, "acme", d.Headers["x-tenant"])
			require.Equal(t, amqp.Persistent, d.DeliveryMode)
			require.NotContains(t, d.Headers, outbox.OutboxIDMetadataKey)
			key, _ := d.Headers[outbox.PartitionKeyMetadataKey].(string)
			var n int
			_, _ = fmt.Sscanf(string(d.Body), `{"order":%d}`, &n)
			if prev, ok := lastPerKey[key]; ok {
				require.Greater(t, n, prev, "key %s out of order", key)
			}
			lastPerKey[key] = n
			delete(want, uuid)
		}
	})
}
