//go:build faults

package faults_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// The consumer of TestInboxEffectsOnceUnderKills runs as this test binary
// started again with inboxConsumerEnv set: it is a process of its own,
// which the test kills with SIGKILL.
const inboxConsumerEnv = "FAULTS_INBOX_CONSUMER"

// consumerRunning is the line a consumer prints once its router runs (its
// subscription made): a RabbitMQ subscriber cannot subscribe while the
// broker is away, so the scenario takes the broker away only from running
// consumers.
const consumerRunning = "inbox consumer: running"

func init() {
	if os.Getenv(inboxConsumerEnv) == "1" {
		if err := runInboxConsumer(); err != nil {
			fmt.Fprintln(os.Stderr, "inbox consumer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// inboxTables are service B's tables.
type inboxTables struct {
	inbox, counters, outbox, dups string
}

func (t inboxTables) env() []string {
	return []string{"FAULTS_INBOX_TABLE=" + t.inbox, "FAULTS_INBOX_COUNTERS=" + t.counters,
		"FAULTS_INBOX_OUTBOX=" + t.outbox, "FAULTS_INBOX_DUPS=" + t.dups}
}

// runInboxConsumer is service B: it consumes A's events from RabbitMQ
// through the inbox, adds one to the event's counter and emits a follow-up
// event into its own outbox, all in the delivery's transaction; it logs
// the duplicates it dropped. It runs until SIGTERM (or SIGKILL).
func runInboxConsumer() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	t := inboxTables{os.Getenv("FAULTS_INBOX_TABLE"), os.Getenv("FAULTS_INBOX_COUNTERS"), os.Getenv("FAULTS_INBOX_OUTBOX"), os.Getenv("FAULTS_INBOX_DUPS")}
	db, err := sql.Open("pgx", os.Getenv("FAULTS_INBOX_DSN"))
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: t.outbox}}, nil)
	if err != nil {
		return err
	}
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
	if err != nil {
		return err
	}
	in, err := inbox.New(db, inbox.Config{Consumer: "service-b", Table: t.inbox, Dialect: outbox.PostgreSQL, Outbox: pub,
		Observer: dupLog{db, t.dups}}, nil)
	if err != nil {
		return err
	}
	logger := watermill.NewStdLogger(false, false)
	var sub message.Subscriber
	if brokers := os.Getenv("FAULTS_KAFKA_BROKERS"); brokers != "" {
		sc := wkafka.DefaultSaramaSubscriberConfig()
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		// A killed member's partitions move on after the session timeout:
		// the broker's minimum, so that kills do not stall the run long.
		sc.Consumer.Group.Session.Timeout = 6 * time.Second
		sc.Consumer.Group.Heartbeat.Interval = time.Second
		sub, err = wkafka.NewSubscriber(wkafka.SubscriberConfig{
			Brokers: strings.Split(brokers, ","), Unmarshaler: wkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: sc, ConsumerGroup: "service-b",
		}, logger)
	} else {
		sub, err = amqp.NewSubscriber(amqp.NewDurableQueueConfig(os.Getenv("FAULTS_AMQP_URL")), logger)
	}
	if err != nil {
		return err
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, logger)
	if err != nil {
		return err
	}
	router.AddMiddleware(in.Middleware)
	go func() {
		select {
		case <-router.Running():
			fmt.Println(consumerRunning)
		case <-ctx.Done():
		}
	}()
	router.AddHandler("service-b", os.Getenv("FAULTS_INBOX_TOPIC"), sub, os.Getenv("FAULTS_INBOX_FOLLOWUP"), pub,
		func(msg *message.Message) ([]*message.Message, error) {
			tx, _ := outbox.TxFromContext(msg.Context())
			if _, err := tx.ExecContext(msg.Context(), `INSERT INTO `+t.counters+` (uuid, n) VALUES ($1, 1)
ON CONFLICT (uuid) DO UPDATE SET n = `+t.counters+`.n + 1`, msg.UUID); err != nil {
				return nil, err
			}
			// Widen the window in which a kill lands mid-handler.
			time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
			followUp := message.NewMessage(watermill.NewUUID(), []byte(msg.UUID))
			followUp.Metadata.Set(outbox.PartitionKeyMetadataKey, msg.UUID) // what it follows, for the check
			return []*message.Message{followUp}, nil
		})
	return router.Run(ctx)
}

// dupLog records each duplicate dropped, outside the delivery's
// transaction (which rolled back), for the scenario's figures.
type dupLog struct {
	db    *sql.DB
	table string
}

func (d dupLog) ObserveDelivery(e inbox.DeliveryEvent) {
	if e.Outcome == inbox.Duplicate {
		_, _ = d.db.Exec(`INSERT INTO ` + d.table + ` (at) VALUES (now())`)
	}
}

// consumerProc runs inbox consumers (this binary, re-executed).
type consumerProc struct {
	t       *testing.T
	env     []string
	logPath string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	logFrom int64 // the log's size when the current process started
	kills   int
}

func newConsumerProc(t *testing.T, name string, env []string) *consumerProc {
	c := &consumerProc{t: t, env: append(os.Environ(), env...), logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		c.signal(syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(c.logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("%s log (last lines):\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return c
}

func (c *consumerProc) start() {
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(c.t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(c.t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(c.env, inboxConsumerEnv+"=1")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(c.t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c.mu.Lock()
	c.cmd, c.done, c.logFrom = cmd, done, st.Size()
	c.mu.Unlock()
}

// waitRunning waits until the process last started has subscribed.
func (c *consumerProc) waitRunning(timeout time.Duration) {
	c.t.Helper()
	c.mu.Lock()
	from := c.logFrom
	c.mu.Unlock()
	waitFor(c.t, timeout, "a consumer to subscribe", func() bool {
		b, _ := os.ReadFile(c.logPath)
		return int64(len(b)) > from && strings.Contains(string(b[from:]), consumerRunning)
	})
}

// signal sends sig to the running process, if any, and waits for it to
// exit.
func (c *consumerProc) signal(sig syscall.Signal) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (c *consumerProc) kill9() {
	c.signal(syscall.SIGKILL)
	c.kills++
}

// TestInboxEffectsOnceUnderKills: service A commits events through its
// outbox; its relay is killed with SIGKILL and restarted while it drains
// to RabbitMQ, or to the Kafka broker (where B's kills also rebalance its
// consumer group). Service B, two consumer processes with the inbox,
// applies each event to a counter and emits a follow-up event through its
// own outbox, relayed by B's relay; its processes are killed with SIGKILL,
// mid-handler or not, and restarted, again and again. Halfway the broker
// itself goes away (RabbitMQ: stop_app; Kafka: SIGKILL) and comes back,
// while A commits its last events. At the end every committed event's
// counter is 1 (none lost, none applied twice), and every follow-up event
// reached the broker through B's relay.
func TestInboxEffectsOnceUnderKills(t *testing.T) {
	t.Run("rabbitmq", func(t *testing.T) { testInboxEffectsOnce(t, "rabbitmq") })
	t.Run("kafka", func(t *testing.T) { testInboxEffectsOnce(t, "kafka") })
}

func testInboxEffectsOnce(t *testing.T, broker string) {
	const (
		events = 3000
		// late events are committed while the broker is away, the rest
		// before the consumers start.
		late          = 1000
		consumerKills = 16
		relayKills    = 4
		// The broker's restart comes before this consumer kill, the
		// relay's last kill after it.
		restartAt = consumerKills/2 + 1
	)
	s := newScenario(t, outbox.PostgreSQL)
	base := strings.TrimPrefix(s.table, "t_")
	b := inboxTables{inbox: "i_" + base, counters: "c_" + base, outbox: "o_" + base, dups: "d_" + base}
	followup := "faults_f_" + base
	var sink map[string]string
	var brokerEnv []string
	var consumeFollowups func() []delivery
	var svc service
	downFor := 10 * time.Second
	switch broker {
	case "rabbitmq":
		url := amqpURL(t)
		svc = rabbitService(t)
		amqpQueue(t, url, s.topic)
		amqpQueue(t, url, followup)
		sink = map[string]string{"OUTBOX_SINK": "amqp", "OUTBOX_AMQP_URL": url}
		brokerEnv = []string{"FAULTS_AMQP_URL=" + url}
		consumeFollowups = func() []delivery { return consumeQueue(t, url, followup) }
	default:
		node := kafkaBroker(t)
		brokers := testenv.Kafka(t, s.topic, followup)
		deleteTopicAtEnd(t, brokers, s.topic)
		deleteTopicAtEnd(t, brokers, followup)
		// The outage's probe records (no message UUID) go to the follow-up
		// topic, which only the check reads (and skips them): on A's topic
		// B would get them, and nack each, as the inbox must, forever.
		svc = node.service(brokers, followup)
		downFor = 5 * time.Second // as TestBrokerOutageKafka
		sink = map[string]string{"OUTBOX_SINK": "kafka", "OUTBOX_KAFKA_BROKERS": strings.Join(brokers, ",")}
		brokerEnv = []string{"FAULTS_KAFKA_BROKERS=" + strings.Join(brokers, ",")}
		consumeFollowups = func() []delivery { return consumeKafka(t, brokers, followup) }
	}
	withTable := func(table string) map[string]string {
		m := map[string]string{"OUTBOX_TABLE": table}
		for k, v := range sink {
			m[k] = v
		}
		return m
	}
	ctx := context.Background()
	for _, q := range []string{
		`CREATE TABLE ` + b.counters + ` (uuid TEXT PRIMARY KEY, n INTEGER NOT NULL)`,
		`CREATE TABLE ` + b.dups + ` (at TIMESTAMPTZ NOT NULL)`,
	} {
		_, err := s.db.ExecContext(ctx, q)
		require.NoError(t, err)
	}
	in, err := inbox.New(s.db, inbox.Config{Consumer: "service-b", Table: b.inbox, Dialect: outbox.PostgreSQL}, nil)
	require.NoError(t, err)
	require.NoError(t, in.Migrate(ctx))
	storeB, err := outbox.NewSQLStore(s.db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: config.Config{Table: b.outbox}}, nil)
	require.NoError(t, err)
	require.NoError(t, storeB.Migrate(ctx))
	t.Cleanup(func() {
		for _, name := range []string{b.inbox, b.counters, b.outbox, b.outbox + "_relays", b.dups} {
			_, _ = s.db.Exec(`DROP TABLE IF EXISTS ` + name)
		}
	})
	count := func(q string) int {
		var n int
		require.NoError(t, s.db.QueryRowContext(ctx, q).Scan(&n))
		return n
	}
	applied := func() int { return count(`SELECT count(*) FROM ` + b.counters) }

	// The broker goes away mid-run: the services lock is taken, before
	// anything starts, for the scenario's run up to the broker's return,
	// so that waiting for others' tests holds up nothing. The consumer
	// processes take no lock, and inherit none (inheritedLock is
	// close-on-exec).
	unlock := lockServices(t)
	s.prewrite(events-late, 100, nil)
	relayA := newRelay(t, "relay-a", s.relayEnv(withTable(s.table)),
		"-lease", "2s", "-batch", "100", "-max-in-flight", "200", "-ordered=false")
	relayA.start()
	relayB := newRelay(t, "relay-b", s.relayEnv(withTable(b.outbox)), "-ordered=false")
	relayB.start()
	env := append(append(b.env(), brokerEnv...), "FAULTS_INBOX_DSN="+testenv.PostgresDSN(),
		"FAULTS_INBOX_TOPIC="+s.topic, "FAULTS_INBOX_FOLLOWUP="+followup)
	consumers := []*consumerProc{newConsumerProc(t, "consumer-1", env), newConsumerProc(t, "consumer-2", env)}
	for _, c := range consumers {
		c.start()
	}

	// Kills spread over the first 80 % of the work, each when B has
	// applied some more events.
	restarts := 0
	for i := 0; i < consumerKills; i++ {
		at := applied() + max(20, (events*8/10-applied())/(consumerKills-i))/2 + rand.IntN(40)
		waitFast(t, 2*time.Minute, "service B to apply more events", func() bool { return applied() >= at || applied() == events })
		require.Less(t, applied(), events, "B applied everything after only %d kills", i)
		if i == restartAt {
			for _, c := range consumers {
				c.waitRunning(time.Minute)
			}
			require.Less(t, applied(), events-late, "B applied every early event before the broker's restart")
			// A commits its last events while the broker is away: its
			// relay meets the outage with rows to publish.
			outageDuring(t, svc, downFor, func() { s.prewrite(late, 100, nil) })
			restarts++
			unlock()
			waitFor(t, time.Minute, "relay A to resume", func() bool { return relayA.logContains(sawBrokerBack) })
		}
		c := consumers[i%len(consumers)]
		c.kill9()
		c.start()
		if i%(consumerKills/relayKills) == 0 {
			relayA.kill9()
			relayA.start()
		}
	}
	waitFor(t, 5*time.Minute, "service B to apply every event", func() bool { return applied() == events })
	s.waitDrained(time.Minute)
	require.NoError(t, relayA.stop())
	relayA.requireNoUnexpectedExit()
	require.True(t, relayA.logContains(sawBrokerOutage), "relay A's log lacks %q", sawBrokerOutage)
	for _, c := range consumers {
		c.signal(syscall.SIGTERM)
	}
	// B's follow-up events, relayed from B's outbox all along.
	waitFor(t, 2*time.Minute, "B's outbox to drain", func() bool {
		return count(`SELECT count(*) FROM `+b.outbox+` WHERE state = 'pending'`) == 0
	})
	require.NoError(t, relayB.stop())
	relayB.requireNoUnexpectedExit()

	once := count(`SELECT count(*) FROM ` + b.counters + ` WHERE n = 1`)
	twice := count(`SELECT count(*) FROM ` + b.counters + ` WHERE n > 1`)
	dropped := count(`SELECT count(*) FROM ` + b.dups)
	committed := len(s.committed)
	lost := committed - applied()
	var unknown int
	counted := map[string]bool{}
	rows, err := s.db.QueryContext(ctx, `SELECT uuid FROM `+b.counters)
	require.NoError(t, err)
	for rows.Next() {
		var u string
		require.NoError(t, rows.Scan(&u))
		counted[u] = true
		if _, ok := s.committed[u]; !ok {
			unknown++
		}
	}
	require.NoError(t, rows.Err())
	followups := map[string]int{}
	for _, d := range consumeFollowups() {
		followups[d.key]++
	}
	var followLost, followDup int
	for u := range counted {
		switch n := followups[u]; {
		case n == 0:
			followLost++
		case n > 1:
			followDup += n - 1
		}
	}
	line := fmt.Sprintf("effects applied exactly once (%s): applied=%d duplicates_dropped=%d lost=%d applied_twice=%d follow_ups_lost=%d follow_up_duplicates=%d consumer_kills=%d relay_kills=%d broker_restarts=%d",
		broker, once, dropped, lost, twice, followLost, followDup, consumerKills, relayA.kills, restarts)
	t.Log(line)
	recordInbox(line)
	record(t, result{committed: committed, received: applied(), lost: lost + followLost, duplicates: followDup})
	require.Equal(t, events, committed)
	require.Zero(t, lost, "events committed by A and never applied by B")
	require.Zero(t, twice, "events applied twice by B")
	require.Zero(t, unknown, "effects of events A never committed")
	require.Equal(t, events, once)
	require.Zero(t, followLost, "follow-up events that never reached the broker")
	require.Len(t, followups, events, "follow-up events of unknown origin")
}

// inboxLines are the summary's lines of the inbox scenarios; resultsMu
// guards them.
var inboxLines []string

// recordInbox adds a line to the suite's summary.
func recordInbox(line string) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	inboxLines = append(inboxLines, "faults: "+line)
}
