//go:build faults

package faults_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
)

// servicesScript is scripts/services, which starts the machine's servers
// (and a killed Kafka node again, on its own log directories).
func servicesScript(t *testing.T) string {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", "scripts", "services"))
	require.NoError(t, err)
	if _, err := os.Stat(path); err != nil {
		t.Skipf("no scripts/services: %v", err)
	}
	return path
}

// kafkaNode is a Kafka node scripts/services runs: the one-node broker
// ("kafka", id 1) or a node of the three-node cluster ("kafka-1" …
// "kafka-3", ids 1–3).
type kafkaNode struct {
	name   string
	id     int32
	script string
}

// kafkaBroker is the one-node broker; its scenarios need the default
// address, the one scripts/services gives it.
func kafkaBroker(t *testing.T) kafkaNode {
	t.Helper()
	if v := os.Getenv("OUTBOX_TEST_KAFKA_BROKERS"); v != "" && v != testenv.DefaultKafkaBrokers {
		t.Skipf("OUTBOX_TEST_KAFKA_BROKERS=%s: killing a broker needs the one of scripts/services", v)
	}
	return kafkaNode{name: "kafka", id: 1, script: servicesScript(t)}
}

// clusterNode is the cluster's node with id.
func clusterNode(t *testing.T, id int32) kafkaNode {
	t.Helper()
	if v := os.Getenv("OUTBOX_TEST_KAFKA_CLUSTER_BROKERS"); v != "" && v != testenv.DefaultKafkaClusterBrokers {
		t.Skipf("OUTBOX_TEST_KAFKA_CLUSTER_BROKERS=%s: killing a node needs the cluster of scripts/services", v)
	}
	return kafkaNode{name: fmt.Sprintf("kafka-%d", id), id: id, script: servicesScript(t)}
}

// pid is the node's process id, or an error when it is not running.
func (n kafkaNode) pid() (int, error) {
	out, err := exec.Command(n.script, "pid", n.name).Output()
	if err != nil {
		return 0, fmt.Errorf("%s not running: %w", n.name, err)
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

// kill sends the node's JVM SIGKILL (no shutdown, no flush: a crash) and
// returns once the process is gone.
func (n kafkaNode) kill() error {
	pid, err := n.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", n.name, pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := n.pid(); err != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still runs 30s after SIGKILL", n.name, pid)
		}
		<-time.After(50 * time.Millisecond)
	}
}

// start starts the node again on its own data directories (scripts/services
// up NAME) and returns once it listens, or once it runs: on a loaded
// machine a JVM may take longer to listen than the script waits, and the
// caller waits for it to answer anyway.
func (n kafkaNode) start() error {
	err := command(n.script, "up", n.name)
	if _, running := n.pid(); err != nil && running == nil {
		return nil
	}
	return err
}

// service is the node as a service outage can take away: killed, started
// again, and up once it answers a metadata request for topic with a leader
// for every partition.
func (n kafkaNode) service(brokers []string, topic string) service {
	return service{
		name:  "Kafka " + n.name,
		stop:  n.kill,
		start: n.start,
		up:    func() error { return kafkaAccepts(brokers, topic, 0, 1, 2) },
	}
}

// probeHeader marks the records kafkaAccepts writes; consumeKafka skips
// them.
const probeHeader = "faults-probe"

// kafkaAccepts reports nil once each of topic's partitions takes a record
// (acks=all, as the relay writes): the broker, or the partition's new
// leader, answers. A kafkaLeaders answer alone comes earlier than that.
func kafkaAccepts(brokers []string, topic string, partitions ...int32) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(time.Second),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0), kgo.RecordDeliveryTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for _, p := range partitions {
		recs = append(recs, &kgo.Record{Topic: topic, Partition: p, Headers: []kgo.RecordHeader{{Key: probeHeader}}})
	}
	return cl.ProduceSync(ctx, recs...).FirstErr()
}

// partitionLeader is a partition's leader as a metadata answer gives it.
type partitionLeader struct {
	node  int32   // -1: none
	epoch int32   // grows with every change of leader
	isr   []int32 // the in-sync replicas, leader included
}

// kafkaLeaders asks brokers for the leaders of topic's partitions.
func kafkaLeaders(brokers []string, topic string) (map[int32]partitionLeader, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(time.Second))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, err
	}
	if len(resp.Topics) != 1 {
		return nil, fmt.Errorf("metadata of %s: %d topics", topic, len(resp.Topics))
	}
	if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	leaders := map[int32]partitionLeader{}
	for _, p := range resp.Topics[0].Partitions {
		l := partitionLeader{node: p.Leader, epoch: p.LeaderEpoch, isr: p.ISR}
		if kerr.ErrorForCode(p.ErrorCode) != nil {
			l.node = -1
		}
		leaders[p.Partition] = l
	}
	if len(leaders) != kafkaPartitions {
		return nil, fmt.Errorf("metadata of %s: %d partitions", topic, len(leaders))
	}
	return leaders, nil
}

// kafkaPartition is the partition the relay's producer (sarama's hash
// partitioner) writes key to.
func kafkaPartition(t *testing.T, topic, key string) int32 {
	t.Helper()
	p, err := sarama.NewHashPartitioner(topic).Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, kafkaPartitions)
	require.NoError(t, err)
	return p
}
