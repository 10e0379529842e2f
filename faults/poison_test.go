//go:build faults

package faults_test

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/sink"
)

// invalidKafkaTopic passes the outbox's own topic check (no whitespace or
// control characters) but not Kafka's: only [a-zA-Z0-9._-] is legal.
const invalidKafkaTopic = "faults.invalid/topic!"

// startPoisonKafka starts an in-process broker (kfake) for a scenario that
// needs a fault no real broker can be made to answer for one message; it
// answers for invalidKafkaTopic what a real broker answers,
// INVALID_TOPIC_EXCEPTION (kfake itself would create it). The Kafka sink
// refuses the name before sending (KafkaPublisher.Publish); the fault
// stays as the broker's answer should one get through.
func startPoisonKafka(t *testing.T, topic string) (*kfake.Cluster, string) {
	t.Helper()
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(kafkaPartitions),
		kfake.SeedTopics(kafkaPartitions, topic),
	)
	require.NoError(t, err, "start kfake")
	t.Cleanup(cluster.Close)
	cluster.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Metadata, kmsg.Produce, kmsg.CreateTopics},
		Topic: invalidKafkaTopic,
		Err:   kerr.InvalidTopicException,
		Count: -1,
	})
	return cluster, cluster.ListenAddrs()[0]
}

// oversized returns a payload larger than the broker and the producer
// accept: both default to about 1 MiB.
func oversized() []byte { return bytes.Repeat([]byte("x"), 2*sink.DefaultKafkaMaxMessageBytes) }

// brokerMaxBytes is the relay's producer limit in TestPoisonUnordered:
// above the broker's message.max.bytes (1 MiB and a few bytes by
// default), so a message between the two is sent and the broker refuses it.
const brokerMaxBytes = 4 * sink.DefaultKafkaMaxMessageBytes

// TestPoisonUnordered: among 1,000 good events on the real broker, one the
// broker refuses as larger than its message.max.bytes (the relay's producer
// allows 4 MiB, the broker 1 MiB: the broker's own error), one larger than
// the producer's limit (refused before sending), and one for a topic Kafka
// refuses. All three end dead with a readable last_error after one
// attempt; the others are all delivered, none dead, none charged.
func TestPoisonUnordered(t *testing.T) { postgresDrivers(t, testPoisonUnordered) }

func testPoisonUnordered(t *testing.T, newScenario func(*testing.T) *scenario) {
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	keyOf := func(i int) string { return fmt.Sprintf("key-%d", i%20) }

	s.prewrite(500, 100, keyOf)
	big := s.newEvents(1, keyOf)[0]
	big.Payload = oversized()
	huge := s.newEvents(1, keyOf)[0]
	huge.Payload = bytes.Repeat([]byte("x"), 2*brokerMaxBytes)
	require.NoError(t, s.commit(s.topic, big, huge))
	badTopic := s.newEvents(1, keyOf)[0]
	require.NoError(t, s.commit(invalidKafkaTopic, badTopic))
	s.prewrite(500, 100, keyOf)
	poison := map[string]bool{big.UUID: true, huge.UUID: true, badTopic.UUID: true}

	r := newRelay(t, "relay", s.relayEnv(map[string]string{
		"OUTBOX_SINK":                    "kafka",
		"OUTBOX_KAFKA_BROKERS":           strings.Join(brokers, ","),
		"OUTBOX_KAFKA_MAX_MESSAGE_BYTES": strconv.Itoa(brokerMaxBytes),
	}), "-lease", "30s", "-batch", "500", "-max-in-flight", "1000", "-ordered=false")
	r.start()
	s.waitDrained(2 * time.Minute)
	require.NoError(t, r.stop())
	r.requireNoUnexpectedExit()

	res := s.check(consumeKafka(t, brokers, s.topic), false, poison)
	require.Equal(t, 1000, res.committed)
	require.Zero(t, s.charged(poison), "a poison message cost another message an attempt")
	requirePoisonDead(t, s, big.UUID, 1, sarama.ErrMessageSizeTooLarge.Error())
	requirePoisonDead(t, s, huge.UUID, 1, "larger than")
	requirePoisonDead(t, s, badTopic.UUID, 1, "topic")
}

// TestPoisonOrdered: the same on an in-process broker (kfake), with per-key
// ordering on, plus a third poison message the broker refuses with a
// retriable-looking error (kfake injects POLICY_VIOLATION for it: no real
// broker refuses one message that way), so it spends its retry budget (2)
// with a long backoff. While it waits, every other key is delivered in full and the
// events of its own key written after it are held back; once it is dead
// they follow, in order. The oversized message holds its key back only
// until it is dead (at once: the error is permanent).
func TestPoisonOrdered(t *testing.T) { postgresDrivers(t, testPoisonOrdered) }

func testPoisonOrdered(t *testing.T, newScenario func(*testing.T) *scenario) {
	s := newScenario(t)
	cluster, addr := startPoisonKafka(t, s.topic)

	// The slow poison's key gets a partition of its own: Kafka accepts or
	// refuses a partition's batch as a whole, so a key sharing it could be
	// refused along with the poison.
	part := func(key string) int32 {
		p, err := sarama.NewHashPartitioner(s.topic).Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, kafkaPartitions)
		require.NoError(t, err)
		return p
	}
	var slowKey string
	var keys []string
	for i := 0; len(keys) < 20; i++ {
		key := fmt.Sprintf("key-%d", i)
		switch {
		case slowKey == "" && part(key) == 0:
			slowKey = key
			keys = append(keys, key)
		case part(key) != 0:
			keys = append(keys, key)
		}
	}
	require.NotEmpty(t, slowKey)
	bigKey := keys[1]
	if bigKey == slowKey {
		bigKey = keys[2]
	}
	keyOf := func(i int) string { return keys[i%len(keys)] }

	s.prewrite(500, 100, keyOf)
	big := s.newEvents(1, func(int) string { return bigKey })[0]
	big.Payload = oversized()
	slow := s.newEvents(1, func(int) string { return slowKey })[0]
	require.NoError(t, s.commit(s.topic, big, slow))
	badTopic := s.newEvents(1, func(int) string { return bigKey })[0]
	require.NoError(t, s.commit(invalidKafkaTopic, badTopic))
	s.prewrite(500, 100, keyOf)
	poison := map[string]bool{big.UUID: true, slow.UUID: true, badTopic.UUID: true}

	cluster.Fault(kfake.Fault{
		Keys:       []kmsg.Key{kmsg.Produce},
		Topic:      s.topic,
		Partitions: []int32{part(slowKey)},
		Err:        kerr.PolicyViolation,
		Count:      -1,
		When: func(req kmsg.Request) bool {
			for _, rt := range req.(*kmsg.ProduceRequest).Topics {
				for _, rp := range rt.Partitions {
					if bytes.Contains(rp.Records, []byte(slow.UUID)) {
						return true
					}
				}
			}
			return false
		},
	})

	r := newRelay(t, "relay", s.relayEnv(map[string]string{
		"OUTBOX_SINK":                      "kafka",
		"OUTBOX_KAFKA_BROKERS":             addr,
		"OUTBOX_MAX_RETRY_COUNT":           "2",
		"OUTBOX_RETRY_BACKOFF_MIN_SECONDS": "600",
		"OUTBOX_RETRY_BACKOFF_MAX_SECONDS": "600",
	}), "-lease", "30s", "-batch", "500", "-max-in-flight", "1000", "-ordered=true")
	r.start()

	// The slow poison failed once and backs off for at least 300 s; in that
	// time everything but its own key drains.
	placeholder := s.placeholder(1)
	waitFor(t, 2*time.Minute, "every key but the slow poison's to drain", func() bool {
		return s.count(`state = 'pending' AND NOT (topic = `+placeholder+` AND partition_key = `+s.placeholder(2)+`)`, s.topic, slowKey) == 0 &&
			s.count(`uuid = `+placeholder+` AND attempts = 1`, slow.UUID) == 1
	})
	state, attempts, lastErr := s.row(slow.UUID)
	require.Equal(t, "pending", state, "the slow poison is still backing off")
	require.Equal(t, 1, attempts)
	t.Logf("slow poison after its first attempt: %s", lastErr)
	behind := s.count(`topic = `+placeholder+` AND partition_key = `+s.placeholder(2)+` AND id > (SELECT id FROM `+s.table+` WHERE uuid = `+s.placeholder(3)+`)`,
		s.topic, slowKey, slow.UUID)
	require.Positive(t, behind)
	require.Equal(t, behind, s.count(`topic = `+placeholder+` AND partition_key = `+s.placeholder(2)+` AND state = 'pending' AND attempts = 0 AND published_at IS NULL AND id > (SELECT id FROM `+s.table+` WHERE uuid = `+s.placeholder(3)+`)`,
		s.topic, slowKey, slow.UUID), "the events behind the slow poison wait, untried")
	requirePoisonDead(t, s, big.UUID, 1, "larger than")

	// Let its backoff pass now rather than in five minutes: its second and
	// last attempt fails too, it is dead, and its key moves on.
	_, err := s.db.Exec(`UPDATE `+s.table+` SET available_at = now() WHERE uuid = $1`, slow.UUID)
	require.NoError(t, err)
	s.waitDrained(2 * time.Minute)
	require.NoError(t, r.stop())
	r.requireNoUnexpectedExit()

	res := s.check(consumeKafka(t, []string{addr}, s.topic), true, poison)
	require.Equal(t, 1000, res.committed)
	require.Zero(t, s.charged(poison), "a poison message cost another message an attempt")
	requirePoisonDead(t, s, slow.UUID, 2, "retry budget of 2 attempts exhausted")
	requirePoisonDead(t, s, badTopic.UUID, 1, "topic")
}

// requirePoisonDead asserts a poison message is dead after attempts
// attempts, with a last_error that says why.
func requirePoisonDead(t *testing.T, s *scenario, uuid string, attempts int, why string) {
	t.Helper()
	state, n, lastErr := s.row(uuid)
	t.Logf("poison %s: %s after %d attempts: %s", uuid, state, n, lastErr)
	require.Equal(t, "dead", state)
	require.Equal(t, attempts, n)
	require.Contains(t, lastErr, why)
}
