package sink

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
	watermilloutbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const kafkaConsumeTimeout = 30 * time.Second

func newKafkaPublisher(t *testing.T, config KafkaConfig) *KafkaPublisher {
	t.Helper()
	pub, err := NewKafkaPublisher(config, watermill.NewStdLogger(false, false))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pub.Close()) })
	return pub
}

func recordHeaders(rec *kgo.Record) map[string]string {
	h := make(map[string]string, len(rec.Headers))
	for _, rh := range rec.Headers {
		h[rh.Key] = string(rh.Value)
	}
	return h
}

func TestKafkaPublisher_KeysHeadersPayloadAndOrder(t *testing.T) {
	t.Parallel()
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers})

	keys := []string{"order-1", "order-2", "order-3", "order-4", "order-5"}
	const perKey = 6
	sent := make(map[string]*message.Message)
	var batch []*message.Message
	for i := range perKey {
		for _, key := range keys {
			msg := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"key":%q,"seq":%d}`, key, i))
			msg.Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, key)
			msg.Metadata.Set(watermilloutbox.EventNameMetadataKey, "OrderPlaced")
			msg.Metadata.Set("seq", strconv.Itoa(i))
			sent[msg.UUID] = msg
			batch = append(batch, msg)
		}
	}
	// Two calls: order must hold across Publish calls too.
	half := len(batch) / 2
	require.NoError(t, pub.Publish(topic, batch[:half]...))
	require.NoError(t, pub.Publish(topic, batch[half:]...))

	records := testenv.ConsumeKafka(t, brokers, topic, len(batch), kafkaConsumeTimeout)
	slices.SortFunc(records, func(a, b *kgo.Record) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})

	partitionOf := make(map[string]int32)
	seqs := make(map[string][]string)
	for _, rec := range records {
		headers := recordHeaders(rec)
		msg := sent[headers[kafka.UUIDHeaderKey]]
		require.NotNil(t, msg, "record with unknown UUID header %q", headers[kafka.UUIDHeaderKey])
		delete(sent, msg.UUID)

		key := msg.Metadata.Get(watermilloutbox.PartitionKeyMetadataKey)
		require.Equal(t, []byte(key), rec.Key)
		require.Equal(t, []byte(msg.Payload), rec.Value)
		require.Len(t, headers, len(msg.Metadata)+1, "headers: metadata and the UUID")
		for k, v := range msg.Metadata {
			require.Equal(t, v, headers[k], "header %q", k)
		}

		if p, ok := partitionOf[key]; ok {
			require.Equal(t, p, rec.Partition, "key %q on two partitions", key)
		}
		partitionOf[key] = rec.Partition
		seqs[key] = append(seqs[key], headers["seq"])
	}
	require.Empty(t, sent, "messages not consumed")

	want := make([]string, perKey)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	for _, key := range keys {
		require.Equal(t, want, seqs[key], "order of key %q", key)
	}
}

func TestKafkaPublisher_KeylessMessagesHaveNullKeyAndSpread(t *testing.T) {
	t.Parallel()
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers})

	// A random partition each: all 32 on one of 3 partitions has
	// probability 3^-31.
	const n = 32
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
	}
	msgs[0].Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, "") // empty counts as none
	require.NoError(t, pub.Publish(topic, msgs...))

	records := testenv.ConsumeKafka(t, brokers, topic, n, kafkaConsumeTimeout)
	partitions := make(map[int32]bool)
	for _, rec := range records {
		require.Nil(t, rec.Key, "keyless message must have a null key")
		partitions[rec.Partition] = true
	}
	require.Greater(t, len(partitions), 1, "keyless messages all went to one partition")
}

func TestKafkaPublisher_OverwriteSaramaConfigIsUsed(t *testing.T) {
	t.Parallel()
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)

	sc := NewKafkaSaramaConfig(KafkaConfig{})
	sc.Producer.MaxMessageBytes = 512
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers, OverwriteSaramaConfig: sc})

	err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), make([]byte, 4096)))
	require.ErrorContains(t, err, "larger than configured Producer.MaxMessageBytes")

	small := message.NewMessage(watermill.NewUUID(), []byte("small"))
	require.NoError(t, pub.Publish(topic, small))
	records := testenv.ConsumeKafka(t, brokers, topic, 1, kafkaConsumeTimeout)
	require.Equal(t, []byte("small"), records[0].Value)
}

func TestKafkaPublisher_MaxMessageBytes(t *testing.T) {
	t.Parallel()
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers, MaxMessageBytes: 1024})

	err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), make([]byte, 4096)))
	require.ErrorContains(t, err, "larger than configured Producer.MaxMessageBytes")
}

func TestValidateKafkaTopic(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"orders", "a", "Orders.placed-v1_x", strings.Repeat("t", 249), "..a", "._"} {
		require.NoError(t, validateKafkaTopic(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", strings.Repeat("t", 250), "orders placed", "orders/placed", "ordérs", "a:b", "a\x00b"} {
		require.Error(t, validateKafkaTopic(bad), "%q", bad)
	}
}

// An illegal topic fails before anything reaches sarama, as a permanent
// error, and the publisher keeps working for legal ones.
func TestKafkaPublisher_IllegalTopicIsPermanent(t *testing.T) {
	t.Parallel()
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers})

	err := pub.Publish("orders placed", message.NewMessage(watermill.NewUUID(), []byte("x")))
	require.ErrorContains(t, err, `illegal Kafka topic name "orders placed"`)
	require.Equal(t, retry.Permanent, retry.DefaultClassifier(err))

	require.NoError(t, pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("ok"))))
	records := testenv.ConsumeKafka(t, brokers, topic, 1, kafkaConsumeTimeout)
	require.Equal(t, "ok", string(records[0].Value))
}

func TestNewKafkaSaramaConfig(t *testing.T) {
	t.Parallel()

	c := NewKafkaSaramaConfig(KafkaConfig{})
	require.NoError(t, c.Validate())
	require.Equal(t, sarama.WaitForAll, c.Producer.RequiredAcks)
	require.False(t, c.Producer.Idempotent, "sarama's idempotent producer lost messages across a broker restart")
	require.Equal(t, 1, c.Net.MaxOpenRequests)
	require.GreaterOrEqual(t, c.Producer.Retry.Max, 5)
	require.Positive(t, c.Producer.Retry.Backoff)
	require.True(t, c.Producer.Return.Successes)
	require.True(t, c.Producer.Return.Errors)
	require.Equal(t, defaultKafkaVersion, c.Version)
	require.Equal(t, DefaultKafkaClientID, c.ClientID)
	require.Equal(t, DefaultKafkaMaxMessageBytes, c.Producer.MaxMessageBytes)
	require.Equal(t, DefaultKafkaTimeout, c.Producer.Timeout)
	require.Greater(t, c.Net.ReadTimeout, c.Producer.Timeout)

	// Same key, same partition; nil key, any partition.
	p := c.Producer.Partitioner("topic")
	require.True(t, p.RequiresConsistency())
	first, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder("k")}, 12)
	require.NoError(t, err)
	for range 10 {
		got, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder("k")}, 12)
		require.NoError(t, err)
		require.Equal(t, first, got)
	}

	c = NewKafkaSaramaConfig(KafkaConfig{
		Version: sarama.V2_8_0_0, ClientID: "relay-1", MaxMessageBytes: 2048, Timeout: 3 * time.Second,
	})
	require.NoError(t, c.Validate())
	require.Equal(t, sarama.V2_8_0_0, c.Version)
	require.Equal(t, "relay-1", c.ClientID)
	require.Equal(t, 2048, c.Producer.MaxMessageBytes)
	require.Equal(t, 3*time.Second, c.Producer.Timeout)
}

func TestKafkaConfig_Validate(t *testing.T) {
	t.Parallel()
	brokers := []string{"127.0.0.1:9092"}
	withSarama := func(change func(*sarama.Config)) KafkaConfig {
		sc := NewKafkaSaramaConfig(KafkaConfig{})
		change(sc)
		return KafkaConfig{Brokers: brokers, OverwriteSaramaConfig: sc}
	}

	tests := []struct {
		name    string
		config  KafkaConfig
		wantErr string
	}{
		{"defaults", KafkaConfig{Brokers: brokers}, ""},
		{"safe overwrite", withSarama(func(c *sarama.Config) { c.ClientID = "x" }), ""},
		{"missing brokers", KafkaConfig{}, "missing brokers"},
		{"empty broker", KafkaConfig{Brokers: []string{""}}, "empty broker"},
		{"acks=1", withSarama(func(c *sarama.Config) { c.Producer.RequiredAcks = sarama.WaitForLocal }), "RequiredAcks"},
		{"acks=0", withSarama(func(c *sarama.Config) {
			c.Producer.RequiredAcks = sarama.NoResponse
			c.Producer.Idempotent = false
		}), "RequiredAcks"},
		{"idempotent", withSarama(func(c *sarama.Config) { c.Producer.Idempotent = true }), "Idempotent"},
		{"no successes", withSarama(func(c *sarama.Config) { c.Producer.Return.Successes = false }), "Return.Successes"},
		{"sarama-invalid overwrite", withSarama(func(c *sarama.Config) { c.Net.MaxOpenRequests = 5 }), "MaxOpenRequests"},
		{"old version", KafkaConfig{Brokers: brokers, Version: sarama.V0_10_2_0}, "idempotent"},
		{"negative max bytes", KafkaConfig{Brokers: brokers, MaxMessageBytes: -1}, "MaxMessageBytes"},
		{"negative timeout", KafkaConfig{Brokers: brokers, Timeout: -time.Second}, "Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			requireConfigCheck(t, tt.config, tt.wantErr, func(c KafkaConfig) error {
				_, err := NewKafkaPublisher(c, nil)
				return err
			})
		})
	}
}

// freePort returns a local address nothing listens on (yet).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// TestKafkaPublisher_StartsWhileBrokerIsDown: the constructor does not
// connect, so a relay starts while Kafka is down; a publish meanwhile fails
// as Unavailable (no row is charged), and the same publisher works once the
// broker is up.
func TestKafkaPublisher_StartsWhileBrokerIsDown(t *testing.T) {
	t.Parallel()
	addr := freePort(t)
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: []string{addr}, Timeout: time.Second})

	err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x")))
	require.ErrorContains(t, err, "connect to Kafka")
	require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err))

	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(p), kfake.AllowAutoTopicCreation(),
		kfake.SeedTopics(1, "orders"))
	require.NoError(t, err)
	t.Cleanup(cluster.Close)

	require.NoError(t, pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("up"))))
	records := testenv.ConsumeKafka(t, []string{addr}, "orders", 1, kafkaConsumeTimeout)
	require.Equal(t, "up", string(records[0].Value))
}

func TestKafkaPublisher_PublishAfterClose(t *testing.T) {
	t.Parallel()
	pub, err := NewKafkaPublisher(KafkaConfig{Brokers: []string{freePort(t)}}, nil)
	require.NoError(t, err)
	require.NoError(t, pub.Close(), "close before any connection")
	require.NoError(t, pub.Close(), "second Close")
	err = pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x")))
	require.ErrorIs(t, err, watermilloutbox.ErrClosed)
	require.Equal(t, retry.Unavailable, retry.DefaultClassifier(err))
}

// The broker refuses a record batch as a whole: small messages sent while a
// message too large for the broker (but not for the producer) is in flight
// to the same partition share its batch, and its error. Each is sent again
// alone, so only the large one fails, and permanently.
func TestKafkaPublisher_BrokerTooLargeFailsOnlyTheLargeMessage(t *testing.T) {
	t.Parallel()
	if testenv.Env("OUTBOX_TEST_KAFKA_BROKERS", "") == "kfake" {
		t.Skip("kfake does not enforce message.max.bytes")
	}
	topic := testenv.TableName(t)
	brokers := testenv.Kafka(t, topic)
	// The broker takes about 1 MiB (message.max.bytes), the producer 4.
	pub := newKafkaPublisher(t, KafkaConfig{Brokers: brokers, MaxMessageBytes: 4 * DefaultKafkaMaxMessageBytes})

	const small = 300
	big := message.NewMessage(watermill.NewUUID(), make([]byte, 2*DefaultKafkaMaxMessageBytes))
	big.Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, "k")
	errs := make(chan error, small+1)
	var sent sync.WaitGroup
	for i := range small + 1 {
		sent.Add(1)
		go func() {
			defer sent.Done()
			msg := big
			if i > 0 {
				msg = message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
				msg.Metadata.Set(watermilloutbox.PartitionKeyMetadataKey, "k")
			}
			err := pub.Publish(topic, msg)
			if msg == big {
				require.Error(t, err)
				require.Equal(t, retry.Permanent, retry.DefaultClassifier(err), "%v", err)
				require.ErrorIs(t, err, sarama.ErrMessageSizeTooLarge)
				return
			}
			errs <- err
		}()
	}
	sent.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			t.Logf("small message failed: %v", err)
		}
	}
	require.Zero(t, failed, "small messages failed with the large one")
	testenv.ConsumeKafka(t, brokers, topic, small, kafkaConsumeTimeout)
}
