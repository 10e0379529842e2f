package forwarder_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/sink"
)

// TestRabbitMQHeadersTooLargeForAFrame relays through the real RabbitMQ a
// row whose metadata (200 KB) cannot fit in one AMQP frame among good
// rows: it is dead after one attempt, the others are delivered, and since
// the connection is never closed over it, no confirm is lost and nothing
// is delivered twice.
func TestRabbitMQHeadersTooLargeForAFrame(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[0])
	url := testenv.AMQPURL(t)
	topic := "frames_" + e.table
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = ch.QueueDelete(topic, false, false, false) })

	msgs := e.publish(t, topic, 200, nil)
	bad := msgs[57].UUID
	// The row as a writer that does not bound metadata leaves it.
	md, err := json.Marshal(map[string]string{"seq": "57", "blob": strings.Repeat("x", 200<<10)})
	require.NoError(t, err)
	_, err = e.db.Exec(`UPDATE `+e.table+` SET metadata = $1 WHERE uuid = $2`, string(md), bad)
	require.NoError(t, err)

	amqpPub, err := sink.NewAMQPPublisher(sink.AMQPConfig{URL: url}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = amqpPub.Close() })
	f, err := forwarder.NewForwarder(e.store, amqpPub, forwarder.Config{}, nil)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- f.Run(t.Context()) }()

	waitFor(t, 60*time.Second, "every row settled", func() bool {
		r, ok := e.row(t, bad)
		return ok && r.State == "dead" && e.count(t, "1=1") == 1
	})
	r, _ := e.row(t, bad)
	require.Equal(t, 1, r.Attempts, "refused before sending: dead after one attempt")
	require.Contains(t, r.LastError.String, "frame_max")
	paused, _ := f.Paused()
	require.False(t, paused)
	require.NoError(t, f.Close())
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("forwarder did not stop")
	}

	got := make(map[string]int)
	for {
		d, ok, err := ch.Get(topic, true)
		require.NoError(t, err)
		if !ok {
			break
		}
		got[d.MessageId]++
	}
	require.Len(t, got, len(msgs)-1, "every good message delivered")
	require.Zero(t, got[bad])
	for uuid, n := range got {
		require.Equal(t, 1, n, "message %s delivered %d times", uuid, n)
	}
}
