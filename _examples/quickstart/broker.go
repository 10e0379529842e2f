package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/e0a82c8c/watermill-outbox/sink"
)

// uuidHeader is where Watermill's Kafka and AMQP marshalers put the UUID.
const uuidHeader = "_watermill_message_uuid"

// broker is where the forwarder publishes and the demo consumes back from.
type broker struct {
	desc      string
	shared    bool // a real server: use a run-unique topic and remove it
	publisher message.Publisher
	// consume delivers the topic's messages to out until ctx ends; it
	// returns once consuming has started.
	consume func(ctx context.Context, topic string, out chan<- delivery) error
	cleanup func(topic string)
	close   func()
}

// newLogger logs warnings and errors only: the demo prints its own story,
// but a failing relay must be visible.
func newLogger() watermill.LoggerAdapter {
	return watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// openBroker connects to OUTBOX_KAFKA_BROKERS or OUTBOX_AMQP_URL, or makes
// an in-process gochannel when neither is set.
func openBroker(ctx context.Context, logger watermill.LoggerAdapter) (*broker, error) {
	kafkaBrokers, amqpURL := os.Getenv("OUTBOX_KAFKA_BROKERS"), os.Getenv("OUTBOX_AMQP_URL")
	switch {
	case kafkaBrokers != "" && amqpURL != "":
		return nil, settingErrorf("set OUTBOX_KAFKA_BROKERS or OUTBOX_AMQP_URL, not both")
	case kafkaBrokers != "":
		return openKafka(ctx, kafkaBrokers, logger)
	case amqpURL != "":
		return openAMQP(amqpURL, logger)
	}
	return openGoChannel(logger), nil
}

func openGoChannel(logger watermill.LoggerAdapter) *broker {
	gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 2 * orderCount}, logger)
	return &broker{
		desc:      "gochannel (in-process)",
		publisher: gc,
		consume: func(ctx context.Context, topic string, out chan<- delivery) error {
			msgs, err := gc.Subscribe(ctx, topic)
			if err != nil {
				return err
			}
			go func() {
				for m := range msgs {
					d := delivery{uuid: m.UUID, name: m.Metadata.Get("name"), payload: m.Payload, at: time.Now()}
					m.Ack()
					if !send(ctx, out, d) {
						return
					}
				}
			}()
			return nil
		},
		cleanup: func(string) {},
		close:   func() { _ = gc.Close() },
	}
}

func openKafka(ctx context.Context, list string, logger watermill.LoggerAdapter) (*broker, error) {
	var seeds []string
	for _, b := range strings.Split(list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			seeds = append(seeds, b)
		}
	}
	if len(seeds) == 0 {
		return nil, settingErrorf("OUTBOX_KAFKA_BROKERS: no broker address in %q", list)
	}
	where := strings.Join(seeds, ",")
	admin, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DialTimeout(connectTimeout))
	if err != nil {
		return nil, settingErrorf("OUTBOX_KAFKA_BROKERS: %s", oneLine(err.Error()))
	}
	pingCtx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := admin.Ping(pingCtx); err != nil {
		admin.Close()
		return nil, settingErrorf("OUTBOX_KAFKA_BROKERS: cannot reach Kafka at %s: %s", where, cause(err))
	}
	pub, err := sink.NewKafkaPublisher(sink.KafkaConfig{Brokers: seeds, Timeout: connectTimeout}, logger)
	if err != nil {
		admin.Close()
		return nil, settingErrorf("OUTBOX_KAFKA_BROKERS: cannot reach Kafka at %s: %s", where, cause(err))
	}
	var consumer *kgo.Client
	return &broker{
		desc:      "Kafka at " + where,
		shared:    true,
		publisher: pub,
		consume: func(ctx context.Context, topic string, out chan<- delivery) error {
			// Created up front, so the consumer has partitions to read
			// from the start instead of waiting for a metadata refresh.
			if err := kafkaTopic(ctx, admin, topic, true); err != nil {
				return err
			}
			c, err := kgo.NewClient(
				kgo.SeedBrokers(seeds...),
				kgo.DialTimeout(connectTimeout),
				kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
				kgo.MetadataMinAge(250*time.Millisecond),
			)
			if err != nil {
				return err
			}
			consumer = c
			go func() {
				for {
					fetches := c.PollFetches(ctx)
					if ctx.Err() != nil || fetches.IsClientClosed() {
						return
					}
					// Fetch errors (a partition not ready yet) are
					// retried by the client; the timeout catches the rest.
					for it := fetches.RecordIter(); !it.Done(); {
						r := it.Next()
						d := delivery{payload: r.Value, at: time.Now()}
						for _, h := range r.Headers {
							switch h.Key {
							case uuidHeader:
								d.uuid = string(h.Value)
							case "name":
								d.name = string(h.Value)
							}
						}
						if !send(ctx, out, d) {
							return
						}
					}
				}
			}()
			return nil
		},
		cleanup: func(topic string) {
			ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
			defer cancel()
			if err := kafkaTopic(ctx, admin, topic, false); err != nil {
				fmt.Fprintf(os.Stderr, "quickstart: delete Kafka topic %s: %s\n", topic, oneLine(err.Error()))
			}
		},
		close: func() {
			if consumer != nil {
				consumer.Close()
			}
			_ = pub.Close()
			admin.Close()
		},
	}, nil
}

// kafkaTopic creates (with the broker's default partitions and replication)
// or deletes topic.
func kafkaTopic(ctx context.Context, admin *kgo.Client, topic string, create bool) error {
	if create {
		req := kmsg.NewPtrCreateTopicsRequest()
		t := kmsg.NewCreateTopicsRequestTopic()
		t.Topic, t.NumPartitions, t.ReplicationFactor = topic, -1, -1
		req.Topics = append(req.Topics, t)
		req.TimeoutMillis = int32(connectTimeout.Milliseconds())
		resp, err := req.RequestWith(ctx, admin)
		if err != nil {
			return err
		}
		for _, t := range resp.Topics {
			if err := kerr.ErrorForCode(t.ErrorCode); err != nil && err != kerr.TopicAlreadyExists {
				return fmt.Errorf("create topic %s: %w", topic, err)
			}
		}
		return nil
	}
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TopicNames = []string{topic} // v0-5
	t := kmsg.NewDeleteTopicsRequestTopic()
	t.Topic = kmsg.StringPtr(topic) // v6+
	req.Topics = append(req.Topics, t)
	req.TimeoutMillis = int32(connectTimeout.Milliseconds())
	resp, err := req.RequestWith(ctx, admin)
	if err != nil {
		return err
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return err
		}
	}
	return nil
}

func openAMQP(rawURL string, logger watermill.LoggerAdapter) (*broker, error) {
	uri, err := amqp.ParseURI(rawURL)
	if err != nil {
		return nil, settingErrorf("OUTBOX_AMQP_URL: invalid URL: %s", oneLine(err.Error()))
	}
	where := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	// The demo's own connection: a reachability check with a timeout, and
	// the consumer. The sink dials its own.
	conn, err := amqp.DialConfig(rawURL, amqp.Config{Dial: amqp.DefaultDial(connectTimeout)})
	if err != nil {
		return nil, settingErrorf("OUTBOX_AMQP_URL: cannot connect to RabbitMQ at %s: %s", where, amqpCause(err))
	}
	pub, err := sink.NewAMQPPublisher(sink.AMQPConfig{URL: rawURL}, logger)
	if err != nil {
		_ = conn.Close()
		return nil, settingErrorf("OUTBOX_AMQP_URL: cannot connect to RabbitMQ at %s: %s", where, amqpCause(err))
	}
	return &broker{
		desc:      "RabbitMQ at " + where,
		shared:    true,
		publisher: pub,
		consume: func(ctx context.Context, topic string, out chan<- delivery) error {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			// The sink's TopologyQueue: a durable queue named after the
			// topic, declared with the same arguments so both succeed.
			if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
				return err
			}
			msgs, err := ch.ConsumeWithContext(ctx, topic, "quickstart", false, false, false, false, nil)
			if err != nil {
				return err
			}
			go func() {
				for m := range msgs {
					name, _ := m.Headers["name"].(string)
					d := delivery{uuid: m.MessageId, name: name, payload: m.Body, at: time.Now()}
					_ = m.Ack(false)
					if !send(ctx, out, d) {
						return
					}
				}
			}()
			return nil
		},
		cleanup: func(topic string) {
			ch, err := conn.Channel()
			if err == nil {
				_, err = ch.QueueDelete(topic, false, false, false)
				_ = ch.Close()
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "quickstart: delete queue %s: %s\n", topic, oneLine(err.Error()))
			}
		},
		close: func() {
			_ = pub.Close()
			_ = conn.Close()
		},
	}, nil
}

// amqpCause prefers the broker's reason (bad credentials, unknown vhost).
func amqpCause(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Reason != "" {
		return ae.Reason
	}
	return cause(err)
}

func send(ctx context.Context, out chan<- delivery, d delivery) bool {
	select {
	case out <- d:
		return true
	case <-ctx.Done():
		return false
	}
}
