//go:build faults

package faults_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// The liveness scenarios: relays run with the default lease (ClaimTimeout,
// 300 s) and the default relay timeout (3 s), relaying to RabbitMQ with
// per-key order, three relay processes and a service committing 100
// events/s over 20 keys throughout.

const (
	livenessKeys  = 20
	handoverLimit = 5 * time.Second // a dead relay's keys move on within this
)

// Log lines of the liveness scenarios.
const (
	sawTakeover = "Outbox relay took over rows from a relay declared dead"
	sawLapse    = "Outbox relay was declared dead"
)

// livenessFigures are the scenarios' figures for the summary, over every
// run of them: the worst stall, the most rows a relay held, the fenced
// rows added up.
var livenessFigures = map[string]float64{}

// livenessMax keeps the largest value of a figure; livenessSum adds up.
func livenessMax(name string, v float64) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	livenessFigures[name] = max(livenessFigures[name], v)
}

func livenessSum(name string, v float64) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	livenessFigures[name] += v
}

// livenessSummary is the summary's line for the liveness scenarios, ""
// when none ran. summary calls it with resultsMu held.
func livenessSummary() string {
	if len(livenessFigures) == 0 {
		return ""
	}
	line := "\nfaults: dead relay, default lease:"
	for _, f := range []struct{ name, format string }{
		{"kill_worst_key_stall", " %s=%.2fs"}, {"kill_held_rows", " %s=%.0f"},
		{"stop_worst_key_stall", " %s=%.2fs"}, {"stop_held_rows", " %s=%.0f"},
		{"stop_fenced_rows", " %s=%.0f"}, {"stop_stale_accepted", " %s=%.0f"},
		{"stop_duplicates", " %s=%.0f"}, {"stop_in_flight_duplicates", " %s=%.0f"},
	} {
		if v, ok := livenessFigures[f.name]; ok {
			line += fmt.Sprintf(f.format, f.name, v)
		}
	}
	return line
}

// livenessDialects runs a scenario on PostgreSQL (database/sql and pgx) and
// MariaDB.
func livenessDialects(t *testing.T, run func(t *testing.T, newScenario func(*testing.T) *scenario)) {
	postgresDrivers(t, run)
	t.Run("mariadb", func(t *testing.T) {
		run(t, func(t *testing.T) *scenario { return newScenario(t, outbox.MySQL) })
	})
}

// livenessRun is a liveness scenario's outbox, relays and service.
type livenessRun struct {
	t      *testing.T
	s      *scenario
	url    string
	relays []*relay
	w      *writer
	// delivered is what RabbitMQ received, in queue order (finish).
	delivered []delivery
}

func startLivenessRun(t *testing.T, s *scenario, extraArgs ...[]string) *livenessRun {
	t.Helper()
	url := amqpURL(t)
	amqpQueue(t, url, s.topic)
	// A backlog over every key, so that the first claims hold rows of
	// most keys, then the service's steady 100 events/s.
	s.prewrite(1500, 500, func(i int) string { return fmt.Sprintf("key-%d", i%livenessKeys) })
	env := s.relayEnv(map[string]string{"OUTBOX_SINK": "amqp", "OUTBOX_AMQP_URL": url})
	l := &livenessRun{t: t, s: s, url: url}
	for i := range 3 {
		args := []string{"-batch", "500", "-max-in-flight", "1000", "-ordered=true"} // the lease is the default
		if i < len(extraArgs) {
			args = append(args, extraArgs[i]...)
		}
		r := newRelay(t, fmt.Sprintf("relay%d", i), env, args...)
		l.relays = append(l.relays, r)
	}
	l.w = s.startWriter(5, 50*time.Millisecond, livenessKeys)
	t.Cleanup(func() {
		select {
		case <-l.w.done:
		default:
			l.w.stop()
		}
	})
	for _, r := range l.relays {
		r.start()
	}
	waitFor(t, time.Minute, "three relays in the registry", func() bool { return l.registered() == 3 })
	return l
}

// now is the database clock in the scenario's dialect.
func (l *livenessRun) now() string {
	if l.s.dialect == outbox.MySQL {
		return "UTC_TIMESTAMP(6)"
	}
	return "now()"
}

func (l *livenessRun) registered() int {
	var n int
	if err := l.s.db.QueryRow(`SELECT count(*) FROM ` + l.s.table + `_relays WHERE alive_until >= ` + l.now()).Scan(&n); err != nil {
		return -1
	}
	return n
}

// holding is the relay holding rows of the most keys, with how many keys
// and rows it holds under a live lease.
func (l *livenessRun) holding() (id string, keys, rows int) {
	l.t.Helper()
	err := l.s.db.QueryRow(`SELECT claimed_by, count(DISTINCT partition_key), count(*) FROM `+l.s.table+
		` WHERE state = 'pending' AND claimed_by IS NOT NULL AND claimed_until > `+l.now()+
		` GROUP BY claimed_by ORDER BY 2 DESC, 3 DESC LIMIT 1`).Scan(&id, &keys, &rows)
	if err != nil {
		return "", 0, 0
	}
	return id, keys, rows
}

// relayOf returns the relay process whose registry id is id (host:pid:…).
func (l *livenessRun) relayOf(id string) *relay {
	l.t.Helper()
	parts := strings.Split(id, ":")
	require.Len(l.t, parts, 3, "relay id %q", id)
	pid, err := strconv.Atoi(parts[1])
	require.NoError(l.t, err)
	for _, r := range l.relays {
		r.mu.Lock()
		cur := r.cur
		r.mu.Unlock()
		if cur != nil && cur.cmd.Process.Pid == pid {
			return r
		}
	}
	l.t.Fatalf("no relay process has pid %d", pid)
	return nil
}

// victim waits for a moment when one relay holds rows over at least 3/4
// of the keys, pauses it (SIGSTOP) there and returns it with its id. A
// relay that settled its rows between the look and the pause is resumed
// and the look made again (a pause this short declares nothing dead).
func (l *livenessRun) victim() (*relay, string) {
	l.t.Helper()
	for range 50 {
		var id string
		waitFast(l.t, time.Minute, "a relay holding rows over most keys", func() bool {
			var keys int
			id, keys, _ = l.holding()
			return keys >= livenessKeys*3/4
		})
		r := l.relayOf(id)
		r.pause()
		// A write it sent just before the pause (an ack of many rows)
		// still lands: look again once what it holds stops changing.
		prev := -1
		poll(l.t, 20*time.Millisecond, 10*time.Second, "the paused relay's last write to land", func() bool {
			n := len(l.held(id))
			same := n == prev
			prev = n
			return same
		})
		if l.heldKeys(id) >= livenessKeys*3/4 {
			return r, id
		}
		r.resume()
	}
	l.t.Fatal("no relay was caught holding rows over most keys")
	return nil, ""
}

// held lists the rows relay id holds under a live lease: id → token.
func (l *livenessRun) held(id string) map[int64]string {
	l.t.Helper()
	rows, err := l.s.db.Query(`SELECT id, claim_token FROM `+l.s.table+` WHERE state = 'pending' AND claimed_by = `+l.s.placeholder(1)+
		` AND claimed_until > `+l.now(), id)
	require.NoError(l.t, err)
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var rowID int64
		var token string
		require.NoError(l.t, rows.Scan(&rowID, &token))
		out[rowID] = token
	}
	require.NoError(l.t, rows.Err())
	return out
}

// heldKeys counts the keys of relay id's rows under a live lease.
func (l *livenessRun) heldKeys(id string) int {
	var n int
	require.NoError(l.t, l.s.db.QueryRow(`SELECT count(DISTINCT partition_key) FROM `+l.s.table+` WHERE state = 'pending' AND claimed_by = `+
		l.s.placeholder(1)+` AND claimed_until > `+l.now(), id).Scan(&n))
	return n
}

// stale counts the rows that still carry one of the tokens.
func (l *livenessRun) stale(tokens map[int64]string) int {
	l.t.Helper()
	n := 0
	for rowID, token := range tokens {
		var c int
		require.NoError(l.t, l.s.db.QueryRow(`SELECT count(*) FROM `+l.s.table+` WHERE id = `+l.s.placeholder(1)+` AND claim_token = `+
			l.s.placeholder(2), rowID, token).Scan(&c))
		n += c
	}
	return n
}

// clock is the database's clock in microseconds since the epoch.
func (l *livenessRun) clock() int64 {
	l.t.Helper()
	q := `SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint`
	if l.s.dialect == outbox.MySQL {
		q = `SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))`
	}
	var us int64
	require.NoError(l.t, l.s.db.QueryRow(q).Scan(&us))
	return us
}

// stalls waits until every key has had a publish (an ack written) after
// since (database clock, µs), and returns the worst key's wait.
func (l *livenessRun) stalls(since int64) time.Duration {
	l.t.Helper()
	q := `SELECT partition_key, (extract(epoch FROM min(published_at)) * 1000000)::bigint FROM ` + l.s.table +
		` WHERE published_at > to_timestamp($1 / 1000000.0) GROUP BY partition_key`
	if l.s.dialect == outbox.MySQL {
		q = `SELECT partition_key, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', min(published_at)) FROM ` + l.s.table +
			` WHERE published_at > TIMESTAMPADD(MICROSECOND, ?, '1970-01-01 00:00:00') GROUP BY partition_key`
	}
	var worst time.Duration
	var worstKey string
	waitFor(l.t, time.Minute, "a publish on every key", func() bool {
		rows, err := l.s.db.Query(q, since)
		require.NoError(l.t, err)
		defer rows.Close()
		n := 0
		worst = 0
		for rows.Next() {
			var key string
			var at int64
			require.NoError(l.t, rows.Scan(&key, &at))
			if d := time.Duration(at-since) * time.Microsecond; d > worst {
				worst, worstKey = d, key
			}
			n++
		}
		require.NoError(l.t, rows.Err())
		return n == livenessKeys
	})
	l.t.Logf("worst key %s: first publish %s after the fault", worstKey, worst.Round(time.Millisecond))
	return worst
}

// finish stops the service, waits for the drain, stops the relays and
// checks what RabbitMQ received.
func (l *livenessRun) finish() result {
	l.t.Helper()
	written := l.w.stop()
	l.t.Logf("writer: %d events committed, %d transactions failed", written, l.w.failed.Load())
	l.s.waitDrained(3 * time.Minute)
	for _, r := range l.relays {
		require.NoError(l.t, r.stop(), "%s stops cleanly on SIGTERM", r.name)
		r.requireNoUnexpectedExit()
	}
	l.delivered = consumeQueue(l.t, l.url, l.s.topic)
	return l.s.check(l.delivered, true, nil)
}

// expired reports whether relay id's heartbeat has expired.
func (l *livenessRun) expired(id string) bool {
	var n int
	require.NoError(l.t, l.s.db.QueryRow(`SELECT count(*) FROM `+l.s.table+`_relays WHERE id = `+l.s.placeholder(1)+
		` AND alive_until < `+l.now(), id).Scan(&n))
	return n == 1
}

// heldUUIDs lists the rows relay id holds under a live lease: uuid → key.
func (l *livenessRun) heldUUIDs(id string) map[string]string {
	l.t.Helper()
	rows, err := l.s.db.Query(`SELECT uuid, partition_key FROM `+l.s.table+` WHERE state = 'pending' AND claimed_by = `+
		l.s.placeholder(1)+` AND claimed_until > `+l.now(), id)
	require.NoError(l.t, err)
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var uuid, key string
		require.NoError(l.t, rows.Scan(&uuid, &key))
		out[uuid] = key
	}
	require.NoError(l.t, rows.Err())
	return out
}

// queueDepth is how many messages the queue holds now.
func (l *livenessRun) queueDepth() int {
	l.t.Helper()
	conn, err := amqp.Dial(l.url)
	require.NoError(l.t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(l.t, err)
	q, err := ch.QueueDeclarePassive(l.s.topic, true, false, false, false, nil)
	require.NoError(l.t, err)
	return q.Messages
}

// lateDuplicates counts, per key, the rows of held (uuid → key) that first
// reached the queue after its first depth messages and reached it twice:
// both copies came after the pause, so one is the paused relay's, sent
// after it; only a send it had begun before (in flight) may be one.
func (l *livenessRun) lateDuplicates(held map[string]string, depth int) map[string]int {
	first, copies := map[string]int{}, map[string]int{}
	for i, d := range l.delivered {
		if _, ok := first[d.uuid]; !ok {
			first[d.uuid] = i
		}
		copies[d.uuid]++
	}
	late := map[string]int{}
	for uuid, key := range held {
		if i, ok := first[uuid]; ok && i >= depth && copies[uuid] > 1 {
			late[key] += copies[uuid] - 1
		}
	}
	return late
}

// sawInAnyLog reports whether some relay's log has line.
func (l *livenessRun) sawInAnyLog(line string) bool {
	for _, r := range l.relays {
		if r.logContains(line) {
			return true
		}
	}
	return false
}

// TestRelayKilledHandsOverInSeconds: with the default 300 s lease, one of
// three relays is killed with SIGKILL while it holds rows over most keys.
// Its keys move on within 5 s, not 300: every key's first publish after
// the kill comes within 5 s of it. Nothing is lost or reordered; the
// duplicates are at most the rows it held. It is restarted afterwards, as
// an orchestrator would.
func TestRelayKilledHandsOverInSeconds(t *testing.T) {
	livenessDialects(t, testRelayKilledHandsOver)
}

func testRelayKilledHandsOver(t *testing.T, newScenario func(*testing.T) *scenario) {
	s := newScenario(t)
	l := startLivenessRun(t, s)
	victim, id := l.victim() // paused: it holds what it held
	victim.kill9()
	at := l.clock()
	rows, keys := len(l.held(id)), l.heldKeys(id)
	t.Logf("killed %s (%s) holding %d rows over %d of %d keys, lease 300s", victim.name, id, rows, keys, livenessKeys)
	require.Positive(t, rows)

	worst := l.stalls(at)
	livenessMax("kill_worst_key_stall", worst.Seconds())
	livenessMax("kill_held_rows", float64(rows))
	waitFor(t, time.Minute, "the survivors to log the takeover", func() bool { return l.sawInAnyLog(sawTakeover) })
	victim.start() // restarted, as an orchestrator would

	res := l.finish()
	require.Less(t, worst, handoverLimit, "every key publishes again within %s of the kill", handoverLimit)
	require.LessOrEqual(t, res.duplicates, rows, "duplicates exceed the rows the killed relay held")
}

// TestRelayPausedIsFenced: one of three relays is paused (SIGSTOP) while it
// holds rows over most keys, past the relay timeout: it is declared dead
// and its rows move on; once none of them carries its claim any more, it is
// resumed (SIGCONT). It notices it was declared dead; every write it makes
// for the rows it held is rejected (its fenced-write counter,
// outbox_relay_stale_rows_total, counts them), none is accepted, and
// nothing is lost or reordered; the duplicates are at most the rows it
// held, and of those it sent after the pause at most its send in flight per
// key: it gives back the rest of its window. On MariaDB, where a claim
// takes three round trips, the server ends a claim transaction the paused
// relay left open (idle_transaction_timeout), so its row locks do not hold
// those keys until it resumes.
func TestRelayPausedIsFenced(t *testing.T) {
	livenessDialects(t, testRelayPausedIsFenced)
}

func testRelayPausedIsFenced(t *testing.T, newScenario func(*testing.T) *scenario) {
	s := newScenario(t)
	ports := make([][]string, 3)
	addrs := make([]string, 3)
	for i := range ports {
		addrs[i] = freeAddr(t)
		ports[i] = []string{"-metrics-addr", addrs[i]}
	}
	l := startLivenessRun(t, s, ports...)
	befores := make([]float64, len(addrs))
	for i, addr := range addrs {
		befores[i] = scrape(t, addr, "outbox_relay_stale_rows_total")
	}
	victim, id := l.victim()
	var addr string
	var before float64
	for i, r := range l.relays {
		if r == victim {
			addr, before = addrs[i], befores[i]
		}
	}
	at := l.clock()
	tokens := l.held(id)
	heldRows := l.heldUUIDs(id)
	depth := l.queueDepth() // what reached RabbitMQ before the pause (and, at most, the sends in flight)
	heldKeys := l.heldKeys(id)
	t.Logf("paused %s (%s) holding %d rows over %d of %d keys", victim.name, id, len(tokens), heldKeys, livenessKeys)
	require.NotEmpty(t, tokens)

	worst := l.stalls(at)
	waitFor(t, time.Minute, "every row the paused relay held to be taken over", func() bool { return l.stale(tokens) == 0 })
	livenessMax("stop_worst_key_stall", worst.Seconds())
	livenessMax("stop_held_rows", float64(len(tokens)))
	// Its rows may all have gone by a late write of its own (an ack sent
	// just before the pause): the pause still lasts past its heartbeat.
	waitFor(t, time.Minute, "the paused relay's heartbeat to expire", func() bool { return l.expired(id) })
	victim.resume()

	// Once resumed it learns it was declared dead; its pending acks and
	// renewals for the rows it held are fenced.
	waitFor(t, time.Minute, "the resumed relay to notice it was declared dead", func() bool { return victim.logContains(sawLapse) })
	waitFor(t, time.Minute, "a survivor to log the takeover", func() bool { return l.sawInAnyLog(sawTakeover) })
	require.Zero(t, l.stale(tokens), "no row carries the stale relay's claim: none of its writes can be accepted")
	fenced := scrape(t, addr, "outbox_relay_stale_rows_total") - before
	livenessSum("stop_fenced_rows", fenced)
	livenessSum("stop_stale_accepted", float64(l.stale(tokens))) // 0, required above
	t.Logf("the resumed relay's fenced writes were rejected for %d rows", int(fenced))

	res := l.finish()
	late, lateSum := l.lateDuplicates(heldRows, depth), 0
	for _, n := range late {
		lateSum += n
	}
	t.Logf("duplicates %d; of the paused relay's rows, sent twice after the pause: %d over %d keys (it held %d rows over %d keys)",
		res.duplicates, lateSum, len(late), len(tokens), heldKeys)
	livenessMax("stop_duplicates", float64(res.duplicates))
	livenessMax("stop_in_flight_duplicates", float64(lateSum))
	require.Less(t, worst, handoverLimit, "every key publishes again within %s of the pause", handoverLimit)
	require.LessOrEqual(t, res.duplicates, len(tokens), "duplicates exceed the rows the paused relay held")
	// Resumed, it gives back what it had not handed out: per key (one
	// send in flight at a time) it sent at most the one in flight.
	for key, n := range late {
		require.LessOrEqual(t, n, 1, "key %s: the resumed relay sent more than its send in flight", key)
	}
}

// pause stops the current process with SIGSTOP; resume continues it.
func (r *relay) pause()  { r.t.Helper(); r.sendSignal(syscall.SIGSTOP) }
func (r *relay) resume() { r.t.Helper(); r.sendSignal(syscall.SIGCONT) }

func (r *relay) sendSignal(sig syscall.Signal) {
	r.t.Helper()
	r.mu.Lock()
	p := r.cur
	r.mu.Unlock()
	require.NotNil(r.t, p, "%s: not running", r.name)
	require.NoError(r.t, p.cmd.Process.Signal(sig))
}

// freeAddr is a loopback address with a port free at the time.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	// The kernel may give a port it just freed to the next bind to port 0:
	// two relays of one scenario got the same address, and the second
	// exited with "address already in use". No address is handed out twice.
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		_ = ln.Close()
		if !handedOut[addr] {
			handedOut[addr] = true
			return addr
		}
	}
	t.Fatal("no free address that was not handed out before")
	return ""
}

var (
	handedOutMu sync.Mutex
	handedOut   = map[string]bool{}
)

// scrape sums the samples of a metric on a relay's /metrics.
func scrape(t *testing.T, addr, metric string) float64 {
	t.Helper()
	var body string
	waitFor(t, 30*time.Second, "the relay's /metrics", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err == nil && resp.StatusCode == http.StatusOK
	})
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		require.NoError(t, err, line)
		sum += v
	}
	return sum
}
