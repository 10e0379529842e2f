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

// TestManyInstancesUnderKills: three relay processes share one PostgreSQL
// outbox of 20,000 events over 500 partition keys, relaying to Kafka with
// per-key ordering on; fifteen times, one of them, at random, is killed
// with SIGKILL and restarted. Nothing is lost and no key's events reach the
// broker out of order.
//
// The kills follow the drain, not the clock: before each one the relays
// have published all but a batch of what is written, and a new batch is
// committed, so every kill lands while the relays have rows to work on,
// however fast or slow the machine.
func TestManyInstancesUnderKills(t *testing.T) { postgresDrivers(t, testManyInstancesUnderKills) }

func testManyInstancesUnderKills(t *testing.T, newScenario func(*testing.T) *scenario) {
	const (
		events    = 20000
		keys      = 500
		instances = 3
		window    = 1000
		kills     = 15
		batch     = 1000 // events committed just before each kill
	)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	keyOf := func(i int) string { return fmt.Sprintf("key-%d", i%keys) }
	written := events - kills*batch
	s.prewrite(written, 1000, keyOf)

	env := s.relayEnv(map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})
	relays := make([]*relay, instances)
	for i := range relays {
		relays[i] = newRelay(t, fmt.Sprintf("relay%d", i), env,
			"-lease", "3s", "-batch", "500", "-max-in-flight", strconv.Itoa(window), "-ordered=true")
		relays[i].start()
	}

	for i := range kills {
		target := written - batch
		waitFast(t, 3*time.Minute, fmt.Sprintf("the relays to publish %d events before kill %d", target, i+1), func() bool {
			return s.published() >= target
		})
		s.prewrite(batch, batch, keyOf)
		written += batch
		victim := relays[rand.IntN(instances)]
		victim.kill9()
		victim.start()
	}
	s.waitDrained(3 * time.Minute)
	for _, r := range relays {
		require.NoError(t, r.stop(), "%s stops cleanly on SIGTERM", r.name)
		r.requireNoUnexpectedExit()
	}

	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Equal(t, events, res.committed)
	require.LessOrEqual(t, res.duplicates, window*kills, "duplicates exceed the in-flight window per kill")
}
