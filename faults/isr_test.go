//go:build faults

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// minISR is the cluster's min.insync.replicas.
const minISR = 2

// TestNotEnoughReplicasKafkaCluster: on the three-node cluster, every
// partition of the topic being written has two replicas, a leader and one
// follower (min.insync.replicas 2, acks=all). The follower is killed with
// SIGKILL mid-drain; once the controller has fenced it (broker.session.
// timeout.ms) the partitions' ISR is the leader alone, below
// min.insync.replicas, and the leader, which stays up, refuses every write
// with NOT_ENOUGH_REPLICAS (or answers a write it had appended while waiting
// for the follower with NOT_ENOUGH_REPLICAS_AFTER_APPEND). The follower is
// kept down a few seconds more, then started again on its log directories.
// The relay pauses (the sink classifies both errors as unavailable), charges
// no row, and resumes once the follower is back in sync.
//
// Why two replicas and not the cluster's three: every node is also a KRaft
// controller, so killing two followers of a three-replica partition loses
// the controller quorum; no ISR can shrink then, and the leader holds
// acks=all writes until they time out (REQUEST_TIMED_OUT) instead of
// refusing them.
func TestNotEnoughReplicasKafkaCluster(t *testing.T) {
	s := newScenario(t, outbox.PostgreSQL)
	brokers := testenv.KafkaCluster(t)
	require.Len(t, brokers, 3) // in node id order
	leader, follower := clusterNode(t, 1), clusterNode(t, 3)
	createReplicatedTopic(t, brokers, s.topic, leader.id, follower.id)
	deleteTopicAtEnd(t, brokers, s.topic)
	survivors := brokers[:2] // nodes 1 and 2
	inSync := func(from []string, want func(isr int) bool) bool {
		now, err := kafkaLeaders(from, s.topic)
		if err != nil {
			return false
		}
		for _, l := range now {
			if l.node != leader.id || !want(len(l.isr)) {
				return false
			}
		}
		return true
	}
	waitFor(t, time.Minute, "the new topic's leader and follower in sync", func() bool {
		return inSync(brokers, func(isr int) bool { return isr == 2 })
	})

	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})

	// Whatever happens, the node runs again before the lock is released.
	t.Cleanup(func() {
		if _, err := follower.pid(); err != nil {
			if err := follower.start(); err != nil {
				t.Errorf("restore %s: %v", follower.name, err)
			}
		}
	})
	killed := time.Now()
	require.NoError(t, follower.kill())
	t.Logf("%s (follower of every partition) killed", follower.name)
	waitFor(t, time.Minute, "the ISR to fall below min.insync.replicas", func() bool {
		return inSync(survivors, func(isr int) bool { return isr < minISR })
	})
	t.Logf("ISR below min.insync.replicas %s after the kill", time.Since(killed).Round(10*time.Millisecond))
	// franz-go may answer a probe with its own ErrRecordRetries, without the
	// broker's error: probe until one comes back with it.
	var refused error
	waitFor(t, time.Minute, "the leader to refuse a write with NOT_ENOUGH_REPLICAS", func() bool {
		refused = kafkaRefuses(survivors, s.topic)
		return notEnoughReplicas(refused)
	})
	t.Logf("the leader refuses an acks=all write: %v", refused)
	waitFor(t, time.Minute, "the relay to meet NOT_ENOUGH_REPLICAS", func() bool {
		return o.relay.logContains(sarama.ErrNotEnoughReplicas.Error()) ||
			o.relay.logContains(sarama.ErrNotEnoughReplicasAfterAppend.Error())
	})
	// Below min.insync.replicas for a few seconds more: a duration the
	// scenario chooses, not a wait for some condition.
	below := s.published()
	<-time.After(3 * time.Second)
	require.Equal(t, below, s.published(), "rows published while no write can be acknowledged")

	// The ISR is back once every partition has two in-sync replicas and
	// takes an acks=all record.
	recovered := make(chan time.Time, 1)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if inSync(brokers, func(isr int) bool { return isr >= minISR }) && kafkaAccepts(brokers, s.topic, 0, 1, 2) == nil {
				recovered <- time.Now()
				return
			}
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
		}
	}()
	require.NoError(t, follower.start(), "start %s again", follower.name)
	t.Logf("%s up again after %s", follower.name, time.Since(killed).Round(100*time.Millisecond))
	var back time.Time
	select {
	case back = <-recovered:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the ISR is not back to %d two minutes after %s started again", minISR, follower.name)
	}
	t.Logf("ISR back to %d and taking writes %s after the kill", minISR, back.Sub(killed).Round(10*time.Millisecond))
	unlock()
	o.resumed(t, "kafka-cluster-isr", back, nil)
	o.finish(t, sawBrokerOutage, sawBrokerBack)

	charged := s.charged(nil)
	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the ISR was below min.insync.replicas")
	require.LessOrEqual(t, res.duplicates, outageWindow, "duplicates beyond the in-flight window")
}

// createReplicatedTopic creates topic on the cluster with kafkaPartitions
// partitions, each with replicas (the first the preferred leader) and
// min.insync.replicas minISR.
func createReplicatedTopic(t *testing.T, brokers []string, topic string, replicas ...int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	require.NoError(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 10000
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions, rt.ReplicationFactor = -1, -1 // given by the assignment
	for p := int32(0); p < kafkaPartitions; p++ {
		a := kmsg.NewCreateTopicsRequestTopicReplicaAssignment()
		a.Partition, a.Replicas = p, replicas
		rt.ReplicaAssignment = append(rt.ReplicaAssignment, a)
	}
	value := fmt.Sprint(minISR)
	rt.Configs = append(rt.Configs, kmsg.CreateTopicsRequestTopicConfig{Name: "min.insync.replicas", Value: &value})
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	require.NoError(t, err)
	require.Len(t, resp.Topics, 1)
	require.NoError(t, kerr.ErrorForCode(resp.Topics[0].ErrorCode), "create %s", topic)
}

// kafkaRefuses writes one acks=all record to partition 0 of topic, without
// retrying, and returns the broker's answer.
func kafkaRefuses(brokers []string, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(time.Second),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.DisableIdempotentWrite(), kgo.RecordRetries(0), kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: 0, Headers: []kgo.RecordHeader{{Key: probeHeader}}}).FirstErr()
}

func notEnoughReplicas(err error) bool {
	return errors.Is(err, kerr.NotEnoughReplicas) || errors.Is(err, kerr.NotEnoughReplicasAfterAppend)
}
