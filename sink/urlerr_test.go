package sink

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// NewAMQPPublisher's error for a URL it cannot parse holds no part of the
// password, whatever the URL's flaw: an unescaped '#', '/' or '?' in the
// password, a bad escape, a bad port, a bad scheme.
func TestAMQPURLErrorHoldsNoPassword(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"amqp://guest:hunter2#SECRETPART@127.0.0.1:5672/",
		"amqp://guest:hunter2/SECRETPART@127.0.0.1:5672/",
		"amqp://guest:hunter2?SECRETPART@127.0.0.1:5672/",
		"amqp://guest:hunter2%zzSECRETPART@127.0.0.1:5672/",
		"amqp://guest:hunter2 SECRETPART@127.0.0.1:5672/",
		"amqp://guest:hunter2SECRETPART@127.0.0.1:notaport/",
		"amqpx://guest:hunter2SECRETPART@127.0.0.1:5672/",
	} {
		_, err := NewAMQPPublisher(AMQPConfig{URL: raw}, nil)
		if err == nil {
			continue // parsed: nothing to leak here
		}
		require.ErrorContains(t, err, "URL", raw)
		for _, part := range []string{"hunter2", "SECRETPART", "zz"} {
			require.False(t, strings.Contains(err.Error(), part), "%s: %v", raw, err)
		}
	}
}
