//go:build faults

package faults_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestKill9ThroughPgBouncer: the relay process reaches PostgreSQL through
// PgBouncer in transaction pooling mode (OUTBOX_DATABASE_URL is PgBouncer's
// address) and LISTENs on a direct connection (--listen-database-url),
// while a service commits events through PgBouncer all along; the relay is
// killed with SIGKILL five times mid-drain and restarted, relaying to
// Kafka with per-key ordering on. Nothing is lost or reordered, the
// duplicates stay within the in-flight window per kill, no statement met
// another client's prepared statement on a pooled server connection
// (SQLSTATE 42P05), and the last relay's LISTEN receives (commits wake it;
// it does not only poll). Over database/sql and over pgx.
//
// The kills follow the drain, not the clock: before each one the relay has
// drained the last batch down to a random quarter to half of it, and a new
// batch is committed, so every kill lands with rows to work on, however
// fast or slow the machine.
func TestKill9ThroughPgBouncer(t *testing.T) {
	t.Run("database_sql", func(t *testing.T) {
		testKill9ThroughPgBouncer(t, newPooledScenario(t))
	})
	t.Run("pgx", func(t *testing.T) {
		s := newPooledScenario(t)
		s.pool = testenv.PgBouncerPool(t)
		testKill9ThroughPgBouncer(t, s)
	})
}

// TestPooledScenarioChecksRead: the checks of a scenario whose service
// goes through PgBouncer answer while other clients of PgBouncer run the
// same statement. pgx names the prepared statement it caches after the
// statement's text, so another client's copy on the server connection
// PgBouncer hands out made the checks' prepare fail (42P05) on every try,
// and TestKill9ThroughPgBouncer once waited a minute for an outbox the relay
// had drained.
func TestPooledScenarioChecksRead(t *testing.T) {
	s := newPooledScenario(t)
	s.prewrite(10, 10, nil)
	other := testenv.PgBouncer(t)
	for range 20 {
		var n int
		// Its own error is not under test: it meets the checks' statement.
		_ = other.QueryRow(`SELECT count(*) FROM ` + s.table + ` WHERE state = 'pending'`).Scan(&n)
		require.Equal(t, 10, s.pending(), "the checks' count: %v", s.countErr.Load())
	}
}

// newPooledScenario is a PostgreSQL scenario whose service and relays go
// through PgBouncer; its checks read PostgreSQL directly (readDirect).
func newPooledScenario(t *testing.T) *scenario {
	s := newScenarioOn(t, outbox.PostgreSQL, testenv.PgBouncer(t), testenv.PgBouncerDSN())
	s.readDirect()
	return s
}

func testKill9ThroughPgBouncer(t *testing.T, s *scenario) {
	const (
		kills  = 5
		window = 500  // MaxInFlight
		batch  = 1000 // events committed just before each kill
		keys   = 100
	)
	brokers := kafkaTopic(t, s.topic)
	// The batches' keys are not the writer's: each key's events are
	// numbered in the order they are committed.
	batchKey := func(i int) string { return fmt.Sprintf("batch-%d", i%keys) }
	s.prewrite(batch, batch/2, batchKey)
	w := s.startWriter(5, 20*time.Millisecond, keys)

	metrics := freeAddr(t)
	r := newRelay(t, "relay", s.relayEnv(map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")}),
		"-listen-database-url", testenv.PostgresDSN(), "-metrics-addr", metrics,
		"-lease", "2s", "-batch", "250", "-max-in-flight", strconv.Itoa(window), "-ordered=true")
	r.start()
	for i := range kills {
		left := batch/4 + rand.IntN(batch/4)
		waitFast(t, time.Minute, fmt.Sprintf("the relay to drain down to %d pending rows before kill %d", left, i+1), func() bool {
			n := s.pending()
			return n >= 0 && n <= left
		})
		s.prewrite(batch, batch/2, batchKey)
		r.kill9()
		r.start()
	}
	wrote := w.stop()
	s.waitDrained(time.Minute)

	// The last relay's LISTEN check (a NOTIFY it sends itself through
	// PgBouncer) has finished: it receives on its direct connection.
	var receiving float64
	waitFor(t, 30*time.Second, "the relay's LISTEN check", func() bool {
		v, ok := metricValue(metrics, "outbox_listen_receiving")
		receiving = v
		return ok
	})
	require.Equal(t, 1.0, receiving, "outbox_listen_receiving: the relay's LISTEN on PostgreSQL's direct address receives")
	require.NoError(t, r.stop(), "the relay stops cleanly on SIGTERM")
	r.requireNoUnexpectedExit()
	require.False(t, r.logContains("42P05"), "a statement met a prepared statement left on a pooled server connection")
	require.False(t, r.logContains("LISTEN receives no notifications"), "the relay's LISTEN was deaf")

	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Equal(t, (kills+1)*batch+wrote, res.committed)
	require.LessOrEqual(t, res.duplicates, window*kills, "duplicates exceed the in-flight window per kill")
}

// metricValue returns the sum of a metric's samples on a relay's /metrics,
// and whether the relay serves it at all (a gauge can be absent until its
// first value).
func metricValue(addr, metric string) (float64, bool) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}
