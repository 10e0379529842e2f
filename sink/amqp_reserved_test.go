package sink

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/retry"
)

// TestAMQPReservedPrefixIsPermanent: RabbitMQ refuses a queue under its
// reserved "amq." prefix with 403 ACCESS_REFUSED; no retry or permission
// can change that, so the message is dead at once, not after its budget.
func TestAMQPReservedPrefixIsPermanent(t *testing.T) {
	t.Parallel()
	url := testenv.AMQPURL(t)
	pub := newAMQPPublisher(t, AMQPConfig{URL: url})
	err := pub.Publish("amq.outbox-test", testMessages(1, "k")...)
	require.Error(t, err)
	require.ErrorContains(t, err, "reserved prefix")
	require.Equal(t, retry.Permanent, retry.DefaultClassifier(err), "%v", err)
}
