//go:build faults

package faults_test

import (
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
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

// The outage runs' relay window (MaxInFlight: the duplicates a fault may
// cause are at most this) and the writer's number of keys.
const (
	outageWindow = 1000
	outageKeys   = 50
)

func startOutageRun(t *testing.T, s *scenario, relayVars map[string]string) *outageRun {
	t.Helper()
	r := newRelay(t, "relay", s.relayEnv(relayVars), "-lease", "30s", "-batch", "500", "-max-in-flight", strconv.Itoa(outageWindow), "-ordered=true")
	r.start()
	o := &outageRun{s: s, relay: r, w: s.startWriter(5, 20*time.Millisecond, outageKeys)}
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
// relay published its first message, of one of keys if keys is not nil:
// the time of the first ack written after back (rows are kept, so
// published_at says when; the database runs on this machine's clock). It
// records the figure for the summary and requires it under two seconds.
func (o *outageRun) resumed(t *testing.T, broker string, back time.Time, keys []string) {
	t.Helper()
	var first time.Time
	waitFast(t, time.Minute, "a publish after the broker's return", func() bool {
		var at sql.NullTime
		q, args := `SELECT min(published_at) FROM `+o.s.table+` WHERE published_at > $1`, []any{back}
		if keys != nil {
			q, args = q+` AND partition_key = ANY($2)`, append(args, keys)
		}
		err := o.s.db.QueryRow(q, args...).Scan(&at)
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
	o.resumed(t, "rabbitmq", back, nil)
	o.finish(t, sawBrokerOutage, sawBrokerBack)

	charged := s.charged(nil)
	s.check(consumeQueue(t, url, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the broker was away")
}

// TestBrokerOutageKafka: the Kafka broker (Apache Kafka, one node) is
// killed with SIGKILL mid-drain while the service keeps committing, and
// started again 5 s later on its own log directories.
func TestBrokerOutageKafka(t *testing.T) { postgresDrivers(t, testBrokerOutageKafka) }

func testBrokerOutageKafka(t *testing.T, newScenario func(*testing.T) *scenario) {
	node := kafkaBroker(t)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})

	back := outage(t, node.service(brokers, s.topic), 5*time.Second)
	unlock()
	o.resumed(t, "kafka", back, nil)
	o.finish(t, sawBrokerOutage, sawBrokerBack)

	charged := s.charged(nil)
	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because the broker was away")
	require.LessOrEqual(t, res.duplicates, outageWindow, "duplicates beyond the in-flight window")
}

// TestLeaderKillKafkaCluster: on the three-node cluster (replication factor
// 3, min.insync.replicas 2, acks=all, idempotent producer), the leader of
// partition 0 of the topic being written is killed with SIGKILL mid-drain
// and started again 5 s later. The relay writes to all three partitions
// throughout; the partitions the killed node led move to a new leader once
// the controller fences it.
func TestLeaderKillKafkaCluster(t *testing.T) {
	s := newScenario(t, outbox.PostgreSQL)
	brokers := testenv.KafkaCluster(t, s.topic)
	deleteTopicAtEnd(t, brokers, s.topic)
	var before map[int32]partitionLeader
	waitFor(t, time.Minute, "the new topic's leaders", func() bool {
		var err error
		before, err = kafkaLeaders(brokers, s.topic)
		return err == nil && !slices.ContainsFunc(slices.Collect(maps.Values(before)), func(l partitionLeader) bool { return l.node < 0 })
	})
	victim := clusterNode(t, before[0].node)
	// The cluster's brokers are listed in node id order.
	require.Len(t, brokers, 3)
	survivors := slices.Delete(slices.Clone(brokers), int(victim.id-1), int(victim.id))
	var led []int32
	for p, l := range before {
		if l.node == victim.id {
			led = append(led, p)
		}
	}
	// The writer's keys (startWriter: key-0 … key-49) on the partitions
	// that change leader.
	var keys []string
	for i := 0; i < outageKeys; i++ {
		key := fmt.Sprintf("key-%d", i)
		if slices.Contains(led, kafkaPartition(t, s.topic, key)) {
			keys = append(keys, key)
		}
	}
	require.NotEmpty(t, keys)
	t.Logf("killing %s, leader of partitions %v (keys %d of %d)", victim.name, led, len(keys), outageKeys)

	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})

	// Whatever happens, the node runs again before the lock is released.
	t.Cleanup(func() {
		if _, err := victim.pid(); err != nil {
			if err := victim.start(); err != nil {
				t.Errorf("restore %s: %v", victim.name, err)
			}
		}
	})
	killed := time.Now()
	require.NoError(t, victim.kill())
	t.Logf("%s killed", victim.name)
	// The new leaders: every partition the victim led has a leader again,
	// at a higher leader epoch, as the survivors answer, and takes a record.
	elected := make(chan time.Time, 1)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if now, err := kafkaLeaders(survivors, s.topic); err == nil {
				moved := true
				for _, p := range led {
					moved = moved && now[p].node >= 0 && now[p].epoch > before[p].epoch
				}
				if moved && kafkaAccepts(survivors, s.topic, led...) == nil {
					elected <- time.Now()
					return
				}
			}
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
		}
	}()
	<-time.After(time.Until(killed.Add(5 * time.Second)))
	require.NoError(t, victim.start(), "start %s again", victim.name)
	t.Logf("%s up again after %s", victim.name, time.Since(killed).Round(100*time.Millisecond))
	var back time.Time
	select {
	case back = <-elected:
	case <-time.After(time.Minute):
		t.Fatalf("partitions %v have no new leader a minute after %s was killed", led, victim.name)
	}
	t.Logf("new leaders of %v take writes %s after the kill", led, back.Sub(killed).Round(10*time.Millisecond))
	unlock()
	o.resumed(t, "kafka-cluster-leader", back, keys)
	o.finish(t)

	charged := s.charged(nil)
	res := s.check(consumeKafka(t, brokers, s.topic), true, nil)
	require.Zero(t, charged, "rows charged a failed attempt because a broker was away")
	require.LessOrEqual(t, res.duplicates, outageWindow, "duplicates beyond the in-flight window")
}

// TestDatabaseOutagePostgres: PostgreSQL is stopped for 5 s mid-drain and
// started again (pg_ctlcluster stop -m fast, start); the relay process keeps
// running through it.
func TestDatabaseOutagePostgres(t *testing.T) { postgresDrivers(t, testDatabaseOutagePostgres) }

func testDatabaseOutagePostgres(t *testing.T, newScenario func(*testing.T) *scenario) {
	svc := postgresService(t)
	s := newScenario(t)
	brokers := kafkaTopic(t, s.topic)
	unlock := lockServices(t)
	o := startOutageRun(t, s, map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")})

	outage(t, svc, 5*time.Second)
	unlock()
	o.finish(t, sawDatabaseOutage)

	charged := s.charged(nil)
	s.check(consumeKafka(t, brokers, s.topic), true, nil)
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
