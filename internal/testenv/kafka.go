package testenv

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// KafkaPartitions is how many partitions the topics Kafka creates have:
// more than one, so tests see keys spread and per-key order kept.
const KafkaPartitions = 3

// Kafka returns brokers with the given topics created (KafkaPartitions
// partitions each). By default it starts an in-process fake cluster (kfake)
// that is closed when t ends and also creates unknown topics on first use. If
// OUTBOX_TEST_KAFKA_BROKERS is set (comma-separated host:port), those brokers
// are used instead, and an unreachable one skips or fails t like any missing
// service.
func Kafka(t testing.TB, topics ...string) (brokers []string) {
	t.Helper()
	if v := os.Getenv("OUTBOX_TEST_KAFKA_BROKERS"); v != "" {
		brokers = strings.Split(v, ",")
		createKafkaTopics(t, brokers, topics)
		return brokers
	}

	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(KafkaPartitions),
	}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(KafkaPartitions, topics...))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("start kfake cluster: %v", err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

func createKafkaTopics(t testing.TB, brokers, topics []string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		Unavailable(t, "Kafka", "kafka", "OUTBOX_TEST_KAFKA_BROKERS", err)
	}
	if len(topics) == 0 {
		return
	}

	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 10000
	for _, topic := range topics {
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic = topic
		rt.NumPartitions = KafkaPartitions
		rt.ReplicationFactor = -1 // the broker's default
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("create Kafka topics %v: %v", topics, err)
	}
	for _, rt := range resp.Topics {
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			t.Fatalf("create Kafka topic %q: %v", rt.Topic, err)
		}
	}
}

// ConsumeKafka reads topic from its start until it has n records, and fails
// t if they have not all arrived within timeout. Records of one partition
// come in offset order.
func ConsumeKafka(t testing.TB, brokers []string, topic string, n int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	records := make([]*kgo.Record, 0, n)
	for len(records) < n {
		fetches := cl.PollRecords(ctx, n-len(records))
		if ctx.Err() != nil {
			t.Fatalf("consume %q: got %d of %d records within %s", topic, len(records), n, timeout)
		}
		for _, fe := range fetches.Errors() {
			t.Fatalf("consume %q partition %d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		records = append(records, fetches.Records()...)
	}
	return records
}
