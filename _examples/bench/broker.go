package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/sink"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// broker is the destination of one run: Kafka (the brokers -kafka names, or
// kfake in process for -kafka kfake) or RabbitMQ.
type broker struct {
	kind    string
	brokers []string       // kafka
	cluster *kfake.Cluster // kafka, when in process
	url     string         // amqp
	parts   int32
}

func newBroker(kind, kafkaBrokers, amqpURL string, partitions int) (*broker, error) {
	b := &broker{kind: kind, url: amqpURL, parts: int32(partitions)}
	switch kind {
	case "kafka":
		if kafkaBrokers != "kfake" {
			b.brokers = splitComma(kafkaBrokers)
			return b, nil
		}
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(partitions))
		if err != nil {
			return nil, fmt.Errorf("start kfake: %w", err)
		}
		b.cluster, b.brokers = c, c.ListenAddrs()
		return b, nil
	case "amqp":
		conn, err := amqp.Dial(amqpURL)
		if err != nil {
			return nil, fmt.Errorf("RabbitMQ at %s: %w", amqpURL, err)
		}
		_ = conn.Close()
		return b, nil
	}
	return nil, fmt.Errorf("unknown sink %q (want kafka or amqp)", kind)
}

func (b *broker) Close() {
	if b.cluster != nil {
		b.cluster.Close()
	}
}

// waitForLeaders waits until every partition of a just-created topic has
// a leader. A producer or consumer that asks before then is told to retry
// and backs off (sarama, franz-go: hundreds of milliseconds), and the
// events of the run's first half second then measured that backoff, not
// the relay.
func (b *broker) waitForLeaders(ctx context.Context, cl *kgo.Client, topic string) error {
	for {
		req := kmsg.NewPtrMetadataRequest()
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = &topic
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err == nil && len(resp.Topics) == 1 && resp.Topics[0].ErrorCode == 0 && len(resp.Topics[0].Partitions) == int(b.parts) {
			ready := true
			for _, p := range resp.Topics[0].Partitions {
				ready = ready && p.ErrorCode == 0 && p.Leader >= 0
			}
			if ready {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic %s: no leader for every partition: %w", topic, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// prepare creates a fresh destination for topic and returns a function
// that removes it.
func (b *broker) prepare(topic string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b.kind == "kafka" {
		cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...))
		if err != nil {
			return nil, err
		}
		defer cl.Close()
		req := kmsg.NewPtrCreateTopicsRequest()
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, b.parts, -1
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return nil, fmt.Errorf("create topic %s: %w", topic, err)
		}
		for _, t := range resp.Topics {
			if err := kerr.ErrorForCode(t.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
				return nil, fmt.Errorf("create topic %s: %w", topic, err)
			}
		}
		if err := b.waitForLeaders(ctx, cl, topic); err != nil {
			return nil, err
		}
		// Deleted afterwards, so that an in-process broker does not keep
		// every run's records in memory.
		return func() {
			cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...))
			if err != nil {
				return
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req := kmsg.NewPtrDeleteTopicsRequest()
			req.TopicNames = []string{topic}
			rt := kmsg.NewDeleteTopicsRequestTopic()
			rt.Topic = &topic
			req.Topics = append(req.Topics, rt)
			req.TimeoutMillis = 30000
			_, _ = req.RequestWith(ctx, cl)
		}, nil
	}
	conn, err := amqp.Dial(b.url)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	// Declared here for both sides: watermill-amqp's queue config never
	// declares the queue it publishes to.
	if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
		return nil, fmt.Errorf("declare queue %s: %w", topic, err)
	}
	return func() {
		if conn, err := amqp.Dial(b.url); err == nil {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(topic, false, false, false)
			}
			_ = conn.Close()
		}
	}, nil
}

// ourPublisher is the destination our relay publishes through: the
// project's sinks.
func (b *broker) ourPublisher() (message.Publisher, error) {
	if b.kind == "kafka" {
		return sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: b.brokers}, nil)
	}
	return sink.NewAMQPPublisher(sink.AMQPConfig{URL: b.url}, nil)
}

// forwarderPublisher is what a user of Watermill's forwarder recipe would
// publish through: the same Kafka producer settings (acks=all,
// idempotent), and for RabbitMQ watermill-amqp's durable queue config
// as it comes (persistent, no publisher confirms).
func (b *broker) forwarderPublisher() (message.Publisher, error) {
	if b.kind == "kafka" {
		return sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: b.brokers}, nil)
	}
	return wamqp.NewPublisher(wamqp.NewDurableQueueConfig(b.url), watermill.NopLogger{})
}

// delivery is one message seen by the consumer.
type delivery struct {
	uuid string
	key  string
	seq  int
	at   time.Time
}

// consumer reads a destination and records what arrives.
type consumer struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	dups    int
	lastSeq map[string]int // per key: the last seq seen
	reorder int
	want    int
	done    chan struct{}
	stop    func()
	// hook, when set, gets every delivery instead of the records above.
	hook func(delivery)
	// next is, per Kafka partition, the offset after the last record read.
	next map[int32]int64
	// probes gets one value per warm-up probe read (see warm).
	probes chan struct{}
}

// probePrefix starts the UUIDs of warm-up probes, which the consumer
// counts apart from the run's messages.
const probePrefix = "warm-up-probe-"

// warmProbes is how many probes warm sends: some on every partition, most
// likely.
const warmProbes = 16

// warm sends probes through pub to topic and waits until c read them all.
// A fresh producer first asks for the topic's metadata and a fresh consumer
// for its offsets, each backing off when the new topic is not ready yet:
// up to 0.8 s measured, which the first events of a latency run measured
// instead of the relay (River's side in four of five such runs), and a
// drain's time included, a larger share of the faster side's.
func (c *consumer) warm(pub message.Publisher, topic string) error {
	for i := range warmProbes {
		if err := pub.Publish(topic, message.NewMessage(probePrefix+strconv.Itoa(i), []byte("probe"))); err != nil {
			return fmt.Errorf("warm-up probe: %w", err)
		}
	}
	timeout := time.After(30 * time.Second)
	for range warmProbes {
		select {
		case <-c.probes:
		case <-timeout:
			return fmt.Errorf("warm-up: the consumer of %s did not read the probes within 30s", topic)
		}
	}
	return nil
}

// consume starts reading topic; done closes once want distinct UUIDs
// arrived.
func (b *broker) consume(topic string, want int) (*consumer, error) {
	return b.consumeWith(topic, want, nil)
}

// consumeFunc starts reading topic, handing every delivery to hook and
// keeping no record of its own; done never closes.
func (b *broker) consumeFunc(topic string, hook func(delivery)) (*consumer, error) {
	return b.consumeWith(topic, 0, hook)
}

func (b *broker) consumeWith(topic string, want int, hook func(delivery)) (*consumer, error) {
	c := &consumer{seen: make(map[string]time.Time, want), lastSeq: make(map[string]int), want: want, done: make(chan struct{}),
		hook: hook, next: make(map[int32]int64), probes: make(chan struct{}, warmProbes)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	c.stop = func() { cancel(); wg.Wait() }
	if b.kind == "kafka" {
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(b.brokers...),
			kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchMaxWait(50*time.Millisecond),
		)
		if err != nil {
			cancel()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			for ctx.Err() == nil {
				fs := cl.PollFetches(ctx)
				now := time.Now()
				fs.EachRecord(func(r *kgo.Record) {
					d := delivery{at: now, key: string(r.Key)}
					for _, h := range r.Headers {
						switch h.Key {
						case kafka.UUIDHeaderKey:
							d.uuid = string(h.Value)
						case "seq":
							_, _ = fmt.Sscan(string(h.Value), &d.seq)
						}
					}
					c.record(d)
					c.mu.Lock()
					c.next[r.Partition] = r.Offset + 1
					c.mu.Unlock()
				})
			}
		}()
		return c, nil
	}
	conn, err := amqp.Dial(b.url)
	if err != nil {
		cancel()
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Qos(1000, 0, false)
	}
	var ds <-chan amqp.Delivery
	if err == nil {
		ds, err = ch.Consume(topic, "", false, false, false, false, nil)
	}
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer conn.Close()
		n := 0
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ds:
				if !ok {
					return
				}
				d := delivery{at: time.Now()}
				d.uuid, _ = m.Headers[wamqp.DefaultMessageUUIDHeaderKey].(string)
				d.key, _ = m.Headers[outbox.PartitionKeyMetadataKey].(string)
				if s, ok := m.Headers["seq"].(string); ok {
					_, _ = fmt.Sscan(s, &d.seq)
				}
				c.record(d)
				// Acks in batches: multiple=true acks everything so far.
				if n++; n%100 == 0 {
					_ = m.Ack(true)
				}
			}
		}
	}()
	return c, nil
}

func (c *consumer) record(d delivery) {
	if strings.HasPrefix(d.uuid, probePrefix) {
		select {
		case c.probes <- struct{}{}:
		default:
		}
		return
	}
	if c.hook != nil {
		c.hook(d)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[d.uuid]; ok {
		c.dups++
		return
	}
	c.seen[d.uuid] = d.at
	if d.key != "" {
		if last, ok := c.lastSeq[d.key]; ok && d.seq < last {
			c.reorder++
		}
		c.lastSeq[d.key] = d.seq
	}
	if len(c.seen) == c.want {
		close(c.done)
	}
}

// wait waits until every wanted message arrived, or timeout.
func (c *consumer) wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
		c.mu.Lock()
		defer c.mu.Unlock()
		return fmt.Errorf("received %d of %d messages within %s", len(c.seen), c.want, timeout)
	}
}

func (c *consumer) arrivals() map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]time.Time, len(c.seen))
	for k, v := range c.seen {
		out[k] = v
	}
	return out
}

// trim deletes the Kafka records of topic that c has read, so that an
// in-process broker's memory stays flat during a long run. A no-op for
// RabbitMQ, whose consumer acks what it read.
func (b *broker) trim(topic string, c *consumer) error {
	if b.kind != "kafka" {
		return nil
	}
	c.mu.Lock()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = topic
	for p, off := range c.next {
		rp := kmsg.NewDeleteRecordsRequestTopicPartition()
		rp.Partition, rp.Offset = p, off
		rt.Partitions = append(rt.Partitions, rp)
	}
	c.mu.Unlock()
	if len(rt.Partitions) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30000
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return fmt.Errorf("delete records of %s/%d: %w", topic, p.Partition, err)
			}
		}
	}
	return nil
}
