//go:build faults

package faults_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
)

// badRowsWindow is the relay's MaxInFlight in TestBadRowsRabbitMQ: the
// duplicates a fault may cause are at most this.
const badRowsWindow = 1000

// TestBadRowsRabbitMQ: the relay command relays to RabbitMQ, with per-key
// ordering, a backlog of 2,000 events over 50 keys and at least 1,000 more
// that a service writes throughout. In the middle of the backlog are two
// rows no broker can take, as a program that writes the table without the
// publisher's checks leaves them: one with 200 KB of metadata (more than one
// AMQP frame of RabbitMQ's default frame_max holds: sent, RabbitMQ would
// close the connection, and the confirms of every message in flight on it
// with it) and one whose metadata is JSON but not an object of strings (the
// relay cannot decode it). Both end dead after one attempt with a
// last_error saying why; every other event is delivered, in order per key,
// with no more duplicates than the window; no claim fails; and the relay
// never finds RabbitMQ unavailable, so it never pauses.
func TestBadRowsRabbitMQ(t *testing.T) { postgresDrivers(t, testBadRowsRabbitMQ) }

func testBadRowsRabbitMQ(t *testing.T, newScenario func(*testing.T) *scenario) {
	url := amqpURL(t)
	s := newScenario(t)
	amqpQueue(t, url, s.topic)
	keyOf := func(i int) string { return "key-" + strconv.Itoa(i%outageKeys) }

	// The bad rows sit in the middle of a backlog, so a window's worth of
	// messages is in flight around them.
	s.prewrite(1000, 100, keyOf)
	bad := s.newEvents(2, func(i int) string { return keyOf(i + 1) })
	big, undecodable := bad[0], bad[1]
	md := map[string]string{"blob": strings.Repeat("x", 200<<10)}
	for k, v := range big.Metadata {
		md[k] = v
	}
	blob, err := json.Marshal(md)
	require.NoError(t, err)
	s.commitRaw(big, string(blob))
	s.commitRaw(undecodable, `{"retries": 3}`)
	poison := map[string]bool{big.UUID: true, undecodable.UUID: true}
	s.prewrite(1000, 100, keyOf)

	metricsAddr := freeAddr(t)
	r := newRelay(t, "relay", s.relayEnv(map[string]string{"OUTBOX_SINK": "amqp", "OUTBOX_AMQP_URL": url}),
		"-lease", "30s", "-batch", "500", "-max-in-flight", strconv.Itoa(badRowsWindow), "-ordered=true",
		"-metrics-addr", metricsAddr)
	r.start()
	w := s.startWriter(5, 20*time.Millisecond, outageKeys)
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			w.stop()
		}
	})
	// Waits that time out are reported, not fatal: the consumer-side count
	// below still runs, so a failing run shows what it cost.
	progressed := eventually(2*time.Minute, func() bool { return w.written.Load() >= 1000 && s.published() >= 2000 })
	if !progressed {
		t.Errorf("the backlog not relayed within 2m: %d rows published, %d pending", s.published(), s.pending())
	}
	written := w.stop()
	t.Logf("writer: %d events committed, %d transactions failed", written, w.failed.Load())
	if progressed && !eventually(2*time.Minute, func() bool { return s.pending() == 0 }) {
		t.Errorf("the outbox did not drain within 2m: %d rows pending, %d unavailable failures",
			s.pending(), int(scrapeLabelled(t, metricsAddr, "outbox_relay_failed_total", `kind="unavailable"`)))
	}

	paused := scrape(t, metricsAddr, "outbox_relay_paused")
	unavailable := scrapeLabelled(t, metricsAddr, "outbox_relay_failed_total", `kind="unavailable"`)
	permanent := scrapeLabelled(t, metricsAddr, "outbox_relay_failed_total", `kind="permanent"`)
	claimErrors := scrapeLabelled(t, metricsAddr, "outbox_relay_db_errors_total", `operation="claim"`)
	t.Logf("relay metrics: paused=%v failed{unavailable}=%v failed{permanent}=%v db_errors{claim}=%v",
		paused, unavailable, permanent, claimErrors)
	require.NoError(t, r.stop())
	r.requireNoUnexpectedExit()

	res := s.check(consumeQueue(t, url, s.topic), true, poison)
	require.Equal(t, 2000+written, res.committed)
	require.LessOrEqual(t, res.duplicates, badRowsWindow, "duplicates beyond the in-flight window")
	require.Zero(t, s.charged(poison), "a bad row cost another message an attempt")
	requirePoisonDead(t, s, big.UUID, 1, "frame_max")
	requirePoisonDead(t, s, undecodable.UUID, 1, "undecodable row: metadata is not a JSON object of strings")
	require.Zero(t, paused, "the relay is paused at the end")
	require.Zero(t, unavailable, "RabbitMQ was found unavailable: the relay paused")
	require.False(t, r.logContains(sawBrokerOutage), "the relay paused")
	require.Zero(t, claimErrors, "a bad row failed claims")
}

// commitRaw commits m on the scenario's topic with its metadata column set
// to metadata, as a program that writes the table without the publisher
// (and its metadata checks) leaves it: published and rewritten in one
// transaction, so the relay never sees the row as the publisher wrote it.
func (s *scenario) commitRaw(m *message.Message, metadata string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := s.db.BeginTx(ctx, nil)
	require.NoError(s.t, err)
	defer func() { _ = tx.Rollback() }()
	require.NoError(s.t, s.pub.WithTx(tx).Publish(s.topic, m))
	res, err := tx.ExecContext(ctx, `UPDATE `+s.table+` SET metadata = `+s.placeholder(1)+` WHERE uuid = `+s.placeholder(2), metadata, m.UUID)
	require.NoError(s.t, err)
	n, err := res.RowsAffected()
	require.NoError(s.t, err)
	require.EqualValues(s.t, 1, n)
	require.NoError(s.t, tx.Commit())
	s.mu.Lock()
	s.committed[m.UUID] = eventOf(m)
	s.mu.Unlock()
}

// eventually polls cond until it holds or timeout passes, and says which.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
	return true
}

// scrapeLabelled sums the samples of a metric on a relay's /metrics whose
// labels include label (`kind="unavailable"`, say).
func scrapeLabelled(t *testing.T, addr, metric, label string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") || !strings.Contains(line, label) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		require.NoError(t, err, line)
		sum += v
	}
	return sum
}
