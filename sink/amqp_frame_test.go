package sink

import (
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
)

// TestAMQPPublisher_RefusesHeadersOverFrameSize: a message whose headers
// cannot fit in one frame is refused as Permanent before it is sent, so
// the connection (and the confirms of other messages on it) survives; one
// whose headers fill the frame exactly is accepted, so the size computed is
// not an underestimate.
func TestAMQPPublisher_RefusesHeadersOverFrameSize(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	topic := testenv.TableName(t)
	conn := amqpConn(t, url)
	cleanupQueues(t, url, "", topic)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url})

	first := testMessages(1, "k")
	require.NoError(t, pub.Publish(topic, first...))
	requireDeliveries(t, first, consumeAMQP(t, conn, topic, 1))
	pub.mu.Lock()
	used := pub.conn
	frameMax := used.Config.FrameSize
	pub.mu.Unlock()
	require.Positive(t, frameMax)

	big := testMessages(3, "k")
	big[1].Metadata.Set("blob", strings.Repeat("x", 200<<10))
	err := pub.Publish(topic, big...)
	require.ErrorContains(t, err, "frame_max")
	require.Equal(t, retry.Permanent, retry.DefaultClassifier(err))
	require.False(t, used.IsClosed(), "the connection survives")

	// Headers that fill the frame to the byte are accepted.
	exact := testMessages(1, "k")
	exact[0].Metadata.Set("blob", "")
	p, err := pub.marshaler.Marshal(exact[0])
	require.NoError(t, err)
	size := headerFixedLen + tableSize(p.Headers) + 10
	for _, s := range []string{p.ContentType, p.ContentEncoding, p.CorrelationId, p.ReplyTo, p.Expiration, p.MessageId, p.Type, p.UserId, p.AppId} {
		size += 1 + len(s)
	}
	exact[0].Metadata.Set("blob", strings.Repeat("y", frameMax-frameOverhead-size))
	require.NoError(t, pub.Publish(topic, exact...))
	over := testMessages(1, "k")
	over[0].Metadata.Set("blob", exact[0].Metadata.Get("blob")+"y")
	require.Equal(t, retry.Permanent, retry.DefaultClassifier(pub.Publish(topic, over...)), "one byte more is refused")

	// Nothing of the refused call was sent; the connection still works.
	rest := []*message.Message{big[0], big[2]}
	require.NoError(t, pub.Publish(topic, rest...))
	requireDeliveries(t, append(exact, rest...), consumeAMQP(t, conn, topic, 3))
	require.False(t, used.IsClosed())
}
