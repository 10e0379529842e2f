package testenv

import (
	"context"
	"errors"
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

// Kafka returns the brokers of a real Apache Kafka with the given topics
// created (KafkaPartitions partitions each): OUTBOX_TEST_KAFKA_BROKERS
// (comma-separated host:port) or DefaultKafkaBrokers, the broker
// scripts/services starts. An unreachable broker skips or fails t like any
// missing service. OUTBOX_TEST_KAFKA_BROKERS=kfake runs the test against an
// in-process fake (KafkaFake) instead.
func Kafka(t testing.TB, topics ...string) (brokers []string) {
	t.Helper()
	v := Env("OUTBOX_TEST_KAFKA_BROKERS", DefaultKafkaBrokers)
	if v == "kfake" {
		return KafkaFake(t, topics...)
	}
	brokers = strings.Split(v, ",")
	createKafkaTopics(t, brokers, topics, "kafka", "OUTBOX_TEST_KAFKA_BROKERS")
	return brokers
}

// KafkaCluster returns the brokers of the three-node cluster
// (OUTBOX_TEST_KAFKA_CLUSTER_BROKERS or DefaultKafkaClusterBrokers) with the
// given topics created at replication factor 3 and min.insync.replicas 2.
func KafkaCluster(t testing.TB, topics ...string) (brokers []string) {
	t.Helper()
	brokers = strings.Split(Env("OUTBOX_TEST_KAFKA_CLUSTER_BROKERS", DefaultKafkaClusterBrokers), ",")
	createKafkaTopics(t, brokers, topics, "kafka-cluster", "OUTBOX_TEST_KAFKA_CLUSTER_BROKERS")
	return brokers
}

// KafkaFake starts an in-process fake Kafka (kfake), closed when t ends, with
// the given topics; it also creates unknown topics on first use. For tests
// where an in-process broker is the point; everything else uses Kafka.
func KafkaFake(t testing.TB, topics ...string) (brokers []string) {
	t.Helper()
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

// createKafkaTopics creates topics on a real cluster: at the broker's
// default replication factor, and with min.insync.replicas 2 on a cluster of
// three or more (so acks=all means two copies).
func createKafkaTopics(t testing.TB, brokers, topics []string, service, variable string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		Unavailable(t, "Kafka", service, variable, err)
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
		if len(brokers) >= 3 {
			rt.ReplicationFactor = 3
			minISR := "2"
			rt.Configs = append(rt.Configs, kmsg.CreateTopicsRequestTopicConfig{Name: "min.insync.replicas", Value: &minISR})
		}
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
