package forwarder_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestTopicFilterSplitsOneTable: two services share one table, each relaying
// its own topics to its own broker. Each forwarder gets exactly its topics
// (by name and by prefix), all of them, every key in order, none twice;
// the rows of topics nobody claims stay untouched.
func TestTopicFilterSplitsOneTable(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		key := func(i int) string { return fmt.Sprint("k", i%7) }
		orders := e.publish(t, "orders.placed", 300, key)
		refunds := e.publish(t, "orders.refunded", 100, key)
		payments := e.publish(t, "payments", 200, key)
		other := e.publish(t, "shipping", 20, key)

		ordersDest, paymentsDest := newRecorder(), newRecorder()
		runForwarder(t, e.store, ordersDest, forwarder.Config{HandlerName: "orders", Topics: []string{"orders.*"}})
		runForwarder(t, e.store, paymentsDest, forwarder.Config{HandlerName: "payments", Topics: []string{"payments", "invoices"}})
		ordersDest.waitDistinct(t, len(orders)+len(refunds), 60*time.Second)
		paymentsDest.waitDistinct(t, len(payments), 60*time.Second)

		requireTopicsInOrder(t, ordersDest, map[string][]string{"orders.placed": uuids(orders), "orders.refunded": uuids(refunds)})
		requireTopicsInOrder(t, paymentsDest, map[string][]string{"payments": uuids(payments)})
		waitFor(t, 30*time.Second, "acks written", func() bool { return e.count(t, "1=1") == len(other) })
		require.Equal(t, len(other), e.count(t, "topic = 'shipping' AND state = 'pending' AND attempts = 0 AND claim_token IS NULL"),
			"a topic outside every filter is never claimed")
	})
}

// TestSubscriberTopicFilter: a subscription narrows the subscriber's filter
// to one topic, and a topic outside the filter is an error.
func TestSubscriberTopicFilter(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[2])
	sub, err := forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{Topics: []string{"orders.*"}}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	_, err = sub.Subscribe(context.Background(), "payments")
	require.ErrorContains(t, err, "outside the subscriber's Topics")
	e.publish(t, "orders.a", 2, nil)
	e.publish(t, "orders.b", 2, nil)
	ch, err := sub.Subscribe(context.Background(), "orders.b")
	require.NoError(t, err)
	for range 2 {
		select {
		case m := <-ch:
			require.Equal(t, "orders.b", m.Metadata.Get(outbox.TopicMetadataKey))
			m.Ack()
		case <-time.After(30 * time.Second):
			t.Fatal("nothing received")
		}
	}
	_, err = forwarder.NewSubscriber(e.store, forwarder.SubscriberConfig{Topics: []string{""}}, nil)
	require.ErrorContains(t, err, "Topics")
}

func TestParseTopicFilter(t *testing.T) {
	t.Parallel()
	f, err := forwarder.ParseTopicFilter([]string{"a.b", "c.*", "d"})
	require.NoError(t, err)
	for topic, want := range map[string]bool{"a.b": true, "c.": true, "c.x.y": true, "d": true, "a": false, "c": false, "d.x": false} {
		require.Equal(t, want, f.Match(topic), topic)
	}
	require.Equal(t, "a.b,d,c.*", f.String())
	all, err := forwarder.ParseTopicFilter([]string{"a", "*"})
	require.NoError(t, err)
	require.True(t, all.All())
	for _, bad := range []string{"", " a", "a*b", "*a", "a b"} {
		_, err := forwarder.ParseTopicFilter([]string{bad})
		require.Error(t, err, "%q", bad)
	}
}

func uuids(msgs []*message.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.UUID
	}
	return out
}

// requireTopicsInOrder checks dest got exactly these messages per topic,
// once each, with every key of a topic in publishing order (each message's
// "seq" metadata is its index in want).
func requireTopicsInOrder(t *testing.T, dest *recorder, want map[string][]string) {
	t.Helper()
	seq := map[string]int{}
	total := 0
	for _, ids := range want {
		for i, id := range ids {
			seq[id] = i
		}
		total += len(ids)
	}
	got := dest.snapshot()
	require.Len(t, got, total, "nothing else, nothing twice")
	last := map[string]int{}
	for _, r := range got {
		i, ok := seq[r.msg.UUID]
		require.True(t, ok, "unexpected message on %s", r.topic)
		require.Contains(t, want[r.topic], r.msg.UUID, "message relayed to the wrong topic")
		k := r.topic + "/" + r.msg.Metadata.Get(outbox.PartitionKeyMetadataKey)
		if prev, ok := last[k]; ok {
			require.Greater(t, i, prev, "key %s out of order", k)
		}
		last[k] = i
		require.Equal(t, strconv.Itoa(i), r.msg.Metadata.Get("seq"))
	}
}
