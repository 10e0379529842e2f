//go:build faults

package faults_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// kafkaPartitions is how many partitions the scenario topics have.
const kafkaPartitions = testenv.KafkaPartitions

// uuidHeader is where watermill-kafka and watermill-amqp put the message
// UUID.
const uuidHeader = "_watermill_message_uuid"

// kafkaTopic creates topic on the real broker (testenv.Kafka: the one-node
// broker of scripts/services) and returns the brokers.
func kafkaTopic(t *testing.T, topic string) []string {
	t.Helper()
	brokers := testenv.Kafka(t, topic)
	deleteTopicAtEnd(t, brokers, topic)
	return brokers
}

// deleteTopicAtEnd deletes topic when t ends: the brokers are shared and
// keep their logs.
func deleteTopicAtEnd(t *testing.T, brokers []string, topic string) {
	t.Cleanup(func() {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			return
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := kmsg.NewPtrDeleteTopicsRequest()
		req.TopicNames = []string{topic}
		req.TimeoutMillis = 5000
		_, _ = req.RequestWith(ctx, cl)
	})
}

// consumeKafka reads topic from its start to its end (the end offsets when
// called) and returns the deliveries in each partition's log order.
func consumeKafka(t *testing.T, brokers []string, topic string) []delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	require.NoError(t, err)
	defer admin.Close()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := 0; p < kafkaPartitions; p++ {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = int32(p)
		rp.Timestamp = -1 // latest
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, admin)
	require.NoError(t, err)
	end := map[int32]int64{}
	total := int64(0)
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			require.NoError(t, kerr.ErrorForCode(rp.ErrorCode), "end offset of %s/%d", topic, rp.Partition)
			end[rp.Partition] = rp.Offset
			total += rp.Offset
		}
	}

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	require.NoError(t, err)
	defer cl.Close()
	next := map[int32]int64{}
	out := make([]delivery, 0, total)
	done := func() bool {
		for p, e := range end {
			if next[p] < e {
				return false
			}
		}
		return true
	}
	for !done() {
		fetches := cl.PollFetches(ctx)
		require.NoError(t, ctx.Err(), "consume %s: %d of %d records", topic, len(out), total)
		for _, fe := range fetches.Errors() {
			require.NoError(t, fe.Err, "consume %s/%d", fe.Topic, fe.Partition)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			if r.Offset >= end[r.Partition] {
				return // written after the end was taken
			}
			next[r.Partition] = r.Offset + 1
			d := delivery{key: string(r.Key)}
			for _, h := range r.Headers {
				switch h.Key {
				case probeHeader:
					return // the scenario's own probe, not the relay's
				case uuidHeader:
					d.uuid = string(h.Value)
				case seqMetadataKey:
					d.seq, _ = strconv.Atoi(string(h.Value))
				}
			}
			out = append(out, d)
		})
	}
	return out
}

// amqpQueue deletes the scenario's queue when t ends.
func amqpQueue(t *testing.T, url, queue string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
		}
	})
}

// consumeQueue reads every message in queue, in queue order; the relay has
// finished, so the count taken first is the whole of it.
func consumeQueue(t *testing.T, url, queue string) []delivery {
	t.Helper()
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	require.NoError(t, err, "queue %s", queue)
	require.NoError(t, ch.Qos(2000, 0, false))
	msgs, err := ch.Consume(queue, "", true, true, false, false, nil)
	require.NoError(t, err)
	out := make([]delivery, 0, q.Messages)
	timeout := time.After(2 * time.Minute)
	for len(out) < q.Messages {
		select {
		case m, ok := <-msgs:
			require.True(t, ok, "consumer closed after %d of %d messages", len(out), q.Messages)
			d := delivery{}
			d.uuid, _ = m.Headers[uuidHeader].(string)
			d.key, _ = m.Headers[outbox.PartitionKeyMetadataKey].(string)
			s, _ := m.Headers[seqMetadataKey].(string)
			d.seq, _ = strconv.Atoi(s)
			out = append(out, d)
		case <-timeout:
			t.Fatalf("queue %s: got %d of %d messages", queue, len(out), q.Messages)
		}
	}
	return out
}

// amqpURL is the RabbitMQ under test.
func amqpURL(t *testing.T) string { return testenv.AMQPURL(t) }
