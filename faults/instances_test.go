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
// per-key ordering on; every second (or every 1/15 of the drain, if that
// comes first) one of them, at random, is killed with SIGKILL and
// restarted. Nothing is lost and no key's events reach the broker out of
// order.
func TestManyInstancesUnderKills(t *testing.T) { postgresDrivers(t, testManyInstancesUnderKills) }

func testManyInstancesUnderKills(t *testing.T, newScenario func(*testing.T) *scenario) {
	const (
		events    = 20000
		keys      = 500
		instances = 3
		window    = 1000
		every     = time.Second // between kills
	)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	s.prewrite(events, 1000, func(i int) string { return fmt.Sprintf("key-%d", i%keys) })

	env := s.relayEnv(map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})
	relays := make([]*relay, instances)
	for i := range relays {
		relays[i] = newRelay(t, fmt.Sprintf("relay%d", i), env,
			"-lease", "3s", "-batch", "500", "-max-in-flight", strconv.Itoa(window), "-ordered=true")
		relays[i].start()
	}

	// A kill every second, or sooner when a fifteenth of the events went
	// out since the last one, so that a fast drain still sees a dozen.
	kills := 0
	deadline := time.Now().Add(3 * time.Minute)
	for {
		since, last := time.Now(), s.published()
		poll(t, 20*time.Millisecond, time.Until(deadline), "the outbox to drain", func() bool {
			return time.Since(since) >= every || s.published() >= last+events/15 || s.pending() == 0
		})
		if s.pending() == 0 {
			break
		}
		victim := relays[rand.IntN(instances)]
		victim.kill9()
		victim.start()
		kills++
	}
	t.Logf("%d kills", kills)
	for _, r := range relays {
		require.NoError(t, r.stop(), "%s stops cleanly on SIGTERM", r.name)
		r.requireNoUnexpectedExit()
	}

	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Equal(t, events, res.committed)
	require.LessOrEqual(t, res.duplicates, window*kills, "duplicates exceed the in-flight window per kill")
	require.GreaterOrEqual(t, kills, 10, "too few kills landed mid-drain to prove anything")
}
