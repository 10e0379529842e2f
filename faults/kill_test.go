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
//
// The kills follow the drain, not the clock: before each one the relay has
// published all but a batch of what is written, and a new batch is
// committed, so every kill lands while the relay has rows to work on
// (mid-claim, mid-publish or mid-ack), however fast or slow the machine.
func TestKill9DuringDrain(t *testing.T) { postgresDrivers(t, testKill9DuringDrain) }

func testKill9DuringDrain(t *testing.T, newScenario func(*testing.T) *scenario) {
	const (
		events = 20000
		kills  = 20
		window = 1000 // MaxInFlight: claimed, unsettled rows per relay
		batch  = 750  // events committed just before each kill
	)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	keyOf := func(i int) string { return fmt.Sprintf("key-%d", i%500) }
	written := events - kills*batch
	s.prewrite(written, 1000, keyOf)

	// Order is not under test here (TestManyInstancesUnderKills does it), so
	// the relay runs unordered, and fast.
	r := newRelay(t, "relay", s.relayEnv(map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")}),
		"-lease", "2s", "-batch", "500", "-max-in-flight", strconv.Itoa(window), "-ordered=false")
	r.start()
	for i := range kills {
		// Each kill at a random point of the last batch's drain.
		target := written - batch + rand.IntN(batch/2)
		waitFast(t, time.Minute, fmt.Sprintf("the relay to publish %d events before kill %d", target, i+1), func() bool {
			return s.published() >= target
		})
		s.prewrite(batch, batch, keyOf)
		written += batch
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
