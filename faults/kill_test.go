//go:build faults

package faults_test

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestKill9DuringDrain: a relay process is killed with SIGKILL twenty times
// while it drains 20,000 events from PostgreSQL to Kafka, and restarted each
// time. Every committed event reaches the broker; the duplicates are at most
// the in-flight window per kill.
func TestKill9DuringDrain(t *testing.T) { postgresDrivers(t, testKill9DuringDrain) }

func testKill9DuringDrain(t *testing.T, newScenario func(*testing.T) *scenario) {
	const (
		events = 20000
		kills  = 20
		window = 1000 // MaxInFlight: claimed, unsettled rows per relay
	)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	s.prewrite(events, 1000, func(i int) string { return fmt.Sprintf("key-%d", i%500) })

	// Order is not under test here (TestManyInstancesUnderKills does it), so
	// the relay runs unordered, and fast.
	r := newRelay(t, "relay", s.relayEnv(map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")}),
		"-lease", "2s", "-batch", "500", "-max-in-flight", strconv.Itoa(window), "-ordered=false")
	r.start()
	for i := 0; i < kills; i++ {
		base := s.published()
		require.GreaterOrEqual(t, base, 0)
		// Spread the kills over the first 70 % of the drain, each at a
		// random point of its stretch: mid-claim, mid-publish or mid-ack.
		// The rest is margin: acks land a batch of up to 500 rows at once,
		// and a drain of 20,000 takes a few seconds.
		step := max(20, (events*7/10-base)/(kills-i))
		at := base + step/2 + rand.IntN(step/2)
		waitFast(t, time.Minute, "the relay to publish more", func() bool {
			return s.published() >= at || s.pending() == 0
		})
		require.Positive(t, s.pending(), "the outbox drained after only %d kills", i)
		r.kill9()
		r.start()
	}
	s.waitDrained(2 * time.Minute)
	require.NoError(t, r.stop(), "the relay stops cleanly on SIGTERM")
	r.requireNoUnexpectedExit()

	res := s.check(consumeKafka(t, brokers, s.topic), false, nil)
	require.Equal(t, events, res.committed)
	require.LessOrEqual(t, res.duplicates, window*kills, "duplicates exceed the in-flight window per kill")
}
