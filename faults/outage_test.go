//go:build faults

package faults_test

import (
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// outageRun is the shape of every outage scenario: a service writes events
// all along (a few per transaction, 250 a second, over 50 keys), one relay
// process relays them with per-key ordering on, and mid-drain something is
// taken away for a while. The relay must neither exit nor lose, reorder or
// dead-letter anything, and resume by itself.
type outageRun struct {
	s     *scenario
	relay *relay
	w     *writer
}

func startOutageRun(t *testing.T, s *scenario, relayVars map[string]string) *outageRun {
	t.Helper()
	r := newRelay(t, "relay", s.relayEnv(relayVars), "-lease", "30s", "-batch", "500", "-max-in-flight", "1000", "-ordered=true")
	r.start()
	o := &outageRun{s: s, relay: r, w: s.startWriter(5, 20*time.Millisecond, 50)}
	t.Cleanup(func() {
		select {
		case <-o.w.done:
		default:
			o.w.stop()
		}
	})
	waitFor(t, time.Minute, "events relayed before the outage", func() bool { return s.published() >= 500 })
	return o
}

// Log lines that show the relay met the outage (and did not just sleep
// through it).
const (
	sawBrokerOutage   = "Destination unavailable, pausing"
	sawBrokerBack     = "Destination available again, resuming"
	sawDatabaseOutage = "failed, retrying"
)

// resumed measures how long after the broker answered again (back) the
// relay published its first message: the time of the first ack written
// after back (rows are kept, so published_at says when; the database runs
// on this machine's clock). It records the figure for the summary and
// requires it under two seconds.
func (o *outageRun) resumed(t *testing.T, broker string, back time.Time) {
	t.Helper()
	var first time.Time
	waitFast(t, time.Minute, "a publish after the broker's return", func() bool {
		var at sql.NullTime
		err := o.s.db.QueryRow(`SELECT min(published_at) FROM `+o.s.table+` WHERE published_at > $1`, back).Scan(&at)
		require.NoError(t, err)
		first = at.Time
		return at.Valid
	})
	took := first.Sub(back)
	recordResume(broker, took)
	t.Logf("%s: first publish %s after the broker answered again", broker, took.Round(time.Millisecond))
	require.Less(t, took, 2*time.Second, "the relay resumes within 2s of the broker's return")
}

// finish lets writing go on until the relay has visibly resumed, stops the
// writer, waits for the drain and stops the relay. The relay's log must
// show each of saw.
func (o *outageRun) finish(t *testing.T, saw ...string) {
	t.Helper()
	base := -1
	waitFor(t, 2*time.Minute, "the database to answer", func() bool { base = o.s.published(); return base >= 0 })
	waitFor(t, 3*time.Minute, "the relay to resume", func() bool { return o.s.published() >= base+500 })
	written := o.w.stop()
	t.Logf("writer: %d events committed, %d transactions failed", written, o.w.failed.Load())
	o.s.waitDrained(3 * time.Minute)
	require.NoError(t, o.relay.stop(), "the relay stops cleanly on SIGTERM")
	o.relay.requireNoUnexpectedExit()
	for _, line := range saw {
		require.True(t, o.relay.logContains(line), "the relay's log lacks %q", line)
	}
}

// TestBrokerOutageRabbitMQ: RabbitMQ is stopped (rabbitmqctl stop_app) for
// 20 s mid-drain.
func TestBrokerOutageRabbitMQ(t *testing.T) { postgresDrivers(t, testBrokerOutageRabbitMQ) }

func testBrokerOutageRabbitMQ(t *testing.T, newScenario func(*testing.T) *scenario) {
	url := amqpURL(t)
	svc := rabbitService(t)
	s := newScenario(t)
	amqpQueue(t, url, s.topic)
	// Locked before the writer starts: waiting for others' tests must not
	// pile up events.
	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "amqp", "OUTBOX_AMQP_URL": url})

	back := outage(t, svc, 20*time.Second)
	unlock()
	o.resumed(t, "rabbitmq", back)
	o.finish(t, sawBrokerOutage, sawBrokerBack)

	charged := s.charged(nil)
	s.check(consumeQueue(t, url, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the broker was away")
}

// TestBrokerOutageKafka: the Kafka broker (kfake, persisting to disk) is
// closed for 10 s mid-drain and started again on the same address with the
// same log.
func TestBrokerOutageKafka(t *testing.T) { postgresDrivers(t, testBrokerOutageKafka) }

func testBrokerOutageKafka(t *testing.T, newScenario func(*testing.T) *scenario) {
	s := newScenario(t)
	k := startKafka(t, true, s.topic)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": k.addr})

	back := k.outage(10 * time.Second)
	o.resumed(t, "kafka", back)
	o.finish(t, sawBrokerOutage, sawBrokerBack)

	charged := s.charged(nil)
	s.check(consumeKafka(t, []string{k.addr}, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the broker was away")
}

// TestDatabaseOutagePostgres: PostgreSQL is stopped for 5 s mid-drain and
// started again (pg_ctlcluster stop -m fast, start); the relay process keeps
// running through it.
func TestDatabaseOutagePostgres(t *testing.T) { postgresDrivers(t, testDatabaseOutagePostgres) }

func testDatabaseOutagePostgres(t *testing.T, newScenario func(*testing.T) *scenario) {
	svc := postgresService(t)
	s := newScenario(t)
	k := startKafka(t, false, s.topic)
	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": k.addr})

	outage(t, svc, 5*time.Second)
	unlock()
	o.finish(t, sawDatabaseOutage)

	charged := s.charged(nil)
	s.check(consumeKafka(t, []string{k.addr}, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the database was away")
}

// TestDatabaseOutageMariaDB: MariaDB is shut down for 5 s mid-drain and
// started again; the relay (MySQL dialect, to RabbitMQ) keeps running.
func TestDatabaseOutageMariaDB(t *testing.T) {
	url := amqpURL(t)
	svc := mariadbService(t)
	s := newScenario(t, outbox.MySQL)
	amqpQueue(t, url, s.topic)
	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "amqp", "OUTBOX_AMQP_URL": url})

	outage(t, svc, 5*time.Second)
	unlock()
	o.finish(t, sawDatabaseOutage)

	charged := s.charged(nil)
	s.check(consumeQueue(t, url, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the database was away")
}
