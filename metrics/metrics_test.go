package metrics_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/metrics"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// outboxEnv is one test's table on PostgreSQL, its store and an
// auto-committing publisher.
type outboxEnv struct {
	db    *sql.DB
	table string
	store *outbox.SQLStore
	pub   *outbox.Publisher
}

func newOutbox(t *testing.T, cfg config.Config) *outboxEnv {
	t.Helper()
	db := testenv.Postgres(t)
	cfg.Table = testenv.TableName(t)
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: outbox.PostgreSQL, Outbox: cfg}, nil)
	require.NoError(t, err)
	require.NoError(t, store.Migrate(context.Background()))
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table) })
	t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + cfg.Table + `_relays`) })
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	return &outboxEnv{db: db, table: cfg.Table, store: store, pub: pub}
}

// publish commits n messages on topic and returns their UUIDs.
func (e *outboxEnv) publish(t *testing.T, topic string, n int) []string {
	t.Helper()
	uuids := make([]string, n)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprint(i)))
		uuids[i] = msgs[i].UUID
	}
	require.NoError(t, e.pub.Publish(topic, msgs...))
	return uuids
}

// fastConfig polls often and backs off briefly.
func fastConfig() config.Config {
	return config.Config{
		PollingInterval:       10 * time.Millisecond,
		RetryBackoffMin:       5 * time.Millisecond,
		RetryBackoffMax:       20 * time.Millisecond,
		ClaimTimeout:          30 * time.Second,
		MaxRetryCount:         3,
		UnavailableBackoffMax: 20 * time.Millisecond,
	}
}

// destination fails each message as its plan says, then accepts it.
type destination struct {
	mu   sync.Mutex
	plan map[string][]error // uuid → errors of its next attempts
	// hook, when set, runs before each message is accepted or failed.
	hook func(msg *message.Message) error
}

func (d *destination) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		d.mu.Lock()
		hook := d.hook
		var err error
		if errs := d.plan[m.UUID]; len(errs) > 0 {
			err, d.plan[m.UUID] = errs[0], errs[1:]
		}
		d.mu.Unlock()
		if hook != nil {
			if herr := hook(m); herr != nil {
				return herr
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *destination) Close() error { return nil }

// run starts a forwarder observed by m and stops it when t ends.
func run(t *testing.T, store relaystore.Store, dest message.Publisher, m *metrics.Metrics) *forwarder.Forwarder {
	t.Helper()
	f, err := forwarder.NewForwarder(store, dest, forwarder.Config{Observer: m}, nil)
	require.NoError(t, err)
	testenv.Start(t, "forwarder", f)
	return f
}

func registry(t *testing.T, m *metrics.Metrics) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(m))
	return reg
}

// sample is the value of the series of name with labels (a subset of its
// labels): a counter's or gauge's value, a histogram's sample count; -1
// when there is no such series.
func sample(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	return gather(t, reg)(name, labels)
}

// gather scrapes reg once and returns sample's lookup on that scrape.
func gather(t *testing.T, reg prometheus.Gatherer) func(name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	return func(name string, labels map[string]string) float64 {
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
		series:
			for _, m := range f.GetMetric() {
				have := map[string]string{}
				for _, l := range m.GetLabel() {
					have[l.GetName()] = l.GetValue()
				}
				for k, v := range labels {
					if have[k] != v {
						continue series
					}
				}
				return value(m)
			}
		}
		return -1
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

// eventually waits, on a ticker, until cond holds.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

type labels = map[string]string

const handler = forwarder.DefaultHandlerName

// A relay run with known outcomes: N published at once, M failing once
// (transient) and then published, K refused permanently (dead).
func TestRelayMetricsAfterKnownOutcomes(t *testing.T) {
	t.Parallel()
	const n, mFlaky, k = 20, 3, 2
	e := newOutbox(t, fastConfig())
	e.publish(t, "orders", n)
	flaky := e.publish(t, "payments", mFlaky)
	poison := e.publish(t, "payments", k)

	dest := &destination{plan: map[string][]error{}}
	for _, u := range flaky {
		dest.plan[u] = []error{errors.New("try again")}
	}
	for _, u := range poison {
		dest.plan[u] = []error{retry.PermanentError(errors.New("never"))}
	}
	m, err := metrics.New(e.store, metrics.Config{}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	run(t, e.store, dest, m)

	orders, payments := labels{"handler_name": handler, "topic": "orders"}, labels{"handler_name": handler, "topic": "payments"}
	eventually(t, 30*time.Second, "every outcome counted", func() bool {
		return sample(t, reg, "outbox_relay_published_total", orders) == n &&
			sample(t, reg, "outbox_relay_published_total", payments) == mFlaky &&
			sample(t, reg, "outbox_relay_dead_total", payments) == k
	})

	require.Equal(t, float64(n), sample(t, reg, "outbox_relay_claimed_total", orders))
	require.Equal(t, float64(2*mFlaky+k), sample(t, reg, "outbox_relay_claimed_total", payments), "the flaky rows are claimed twice")
	require.Zero(t, sample(t, reg, "outbox_relay_reclaimed_total", orders))
	require.Equal(t, float64(mFlaky), sample(t, reg, "outbox_relay_failed_total", labels{"topic": "payments", "kind": "transient"}))
	require.Equal(t, float64(k), sample(t, reg, "outbox_relay_failed_total", labels{"topic": "payments", "kind": "permanent"}))
	for _, kind := range []string{"unavailable", "unhandled"} {
		require.Zero(t, sample(t, reg, "outbox_relay_failed_total", labels{"topic": "payments", "kind": kind}), kind)
	}
	for _, kind := range []string{"transient", "permanent"} {
		require.Zero(t, sample(t, reg, "outbox_relay_failed_total", labels{"topic": "orders", "kind": kind}), kind)
	}
	require.Zero(t, sample(t, reg, "outbox_relay_dead_total", orders))
	require.Equal(t, float64(n), sample(t, reg, "outbox_relay_lag_seconds", orders), "one lag per publish")
	require.Equal(t, float64(mFlaky), sample(t, reg, "outbox_relay_lag_seconds", payments))
	require.Positive(t, sample(t, reg, "outbox_relay_claim_duration_seconds", labels{"handler_name": handler}))
	require.Equal(t, float64(mFlaky), sample(t, reg, "outbox_relay_write_duration_seconds", labels{"operation": "record_failure"}))
	require.Equal(t, float64(k), sample(t, reg, "outbox_relay_write_duration_seconds", labels{"operation": "mark_dead"}))
	eventually(t, 10*time.Second, "the ack writes", func() bool {
		return sample(t, reg, "outbox_relay_write_duration_seconds", labels{"operation": "mark_published"}) > 0
	})
	require.Equal(t, -1.0, sample(t, reg, "outbox_relay_stale_rows_total", nil), "no stale write")
	require.Equal(t, -1.0, sample(t, reg, "outbox_relay_db_errors_total", nil), "no database error")
	require.Zero(t, sample(t, reg, "outbox_relay_paused", labels{"handler_name": handler}))

	// The table: the dead rows stay, nothing else.
	eventually(t, 10*time.Second, "acked rows deleted", func() bool {
		var left int
		require.NoError(t, e.db.QueryRow(`SELECT count(*) FROM `+e.table+` WHERE state = 'pending'`).Scan(&left))
		return left == 0
	})
}

// A row taken over from an expired lease counts as reclaimed; an ack write
// rejected because another claim took the row over counts as stale.
func TestRelayMetricsReclaimedAndStale(t *testing.T) {
	t.Parallel()
	e := newOutbox(t, fastConfig())
	uuids := e.publish(t, "orders", 3)
	// A claim whose lease is over at once, as if its relay had crashed.
	c, err := e.store.Claim(context.Background(), relaystore.ClaimRequest{Limit: 3, Lease: time.Microsecond})
	require.NoError(t, err)
	require.Len(t, c.Rows, 3)

	// The last row's publish waits until another "relay" has taken it over.
	inside, proceed := make(chan struct{}), make(chan struct{})
	dest := &destination{hook: func(msg *message.Message) error {
		if msg.UUID == uuids[2] {
			close(inside)
			<-proceed
		}
		return nil
	}}
	m, err := metrics.New(e.store, metrics.Config{}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	run(t, e.store, dest, m)

	select {
	case <-inside:
	case <-time.After(30 * time.Second):
		t.Fatal("the row was not relayed")
	}
	_, err = e.db.Exec(`UPDATE `+e.table+` SET claim_token = 'another relay' WHERE uuid = $1`, uuids[2])
	require.NoError(t, err)
	close(proceed)

	l := labels{"handler_name": handler}
	eventually(t, 30*time.Second, "the stale ack counted", func() bool {
		return sample(t, reg, "outbox_relay_stale_rows_total", labels{"operation": "mark_published"}) == 1
	})
	require.Equal(t, 3.0, sample(t, reg, "outbox_relay_reclaimed_total", labels{"topic": "orders"}))
	require.Equal(t, 3.0, sample(t, reg, "outbox_relay_published_total", labels{"topic": "orders"}))
	require.Equal(t, -1.0, sample(t, reg, "outbox_relay_stale_rows_total", labels{"operation": "release"}))
	require.Zero(t, sample(t, reg, "outbox_relay_paused", l))
}

// The paused gauge follows the circuit: 1 while the destination is
// unavailable, 0 once it answers; each failed attempt of the outage counts
// in outbox_relay_failed_total{kind="unavailable"} as it happens; the
// outage charges nothing.
func TestRelayMetricsPaused(t *testing.T) {
	t.Parallel()
	e := newOutbox(t, fastConfig())
	e.publish(t, "orders", 1)
	up := make(chan struct{})
	dest := &destination{hook: func(*message.Message) error {
		select {
		case <-up:
			return nil
		default:
			return retry.UnavailableError(errors.New("connection refused"))
		}
	}}
	m, err := metrics.New(nil, metrics.Config{}, nil) // relay metrics only
	require.NoError(t, err)
	reg := registry(t, m)
	f := run(t, e.store, dest, m)

	l := labels{"handler_name": handler}
	eventually(t, 30*time.Second, "paused", func() bool { return sample(t, reg, "outbox_relay_paused", l) == 1 })
	paused, _ := f.Paused()
	require.True(t, paused)
	unavailable := labels{"topic": "orders", "kind": "unavailable"}
	eventually(t, 30*time.Second, "the outage counted while it lasts", func() bool {
		return sample(t, reg, "outbox_relay_failed_total", unavailable) >= 1
	})
	close(up)
	eventually(t, 30*time.Second, "resumed", func() bool { return sample(t, reg, "outbox_relay_paused", l) == 0 })
	eventually(t, 30*time.Second, "published", func() bool {
		return sample(t, reg, "outbox_relay_published_total", labels{"topic": "orders"}) == 1
	})
	require.Equal(t, -1.0, sample(t, reg, "outbox_pending", nil), "no table gauges without a StatsSource")
}

// The Stats gauges after a known mix of rows on two topics.
func TestStatsGauges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newOutbox(t, fastConfig())
	e.publish(t, "a", 5)
	e.publish(t, "b", 2)
	onlyA := relaystore.TopicFilter{Names: []string{"a"}}
	claim := func(n int) relaystore.Claimed {
		c, err := e.store.Claim(ctx, relaystore.ClaimRequest{Topics: onlyA, Limit: n, Lease: time.Hour})
		require.NoError(t, err)
		require.Len(t, c.Rows, n)
		return c
	}
	claim(2) // leased
	c := claim(1)
	_, err := e.store.RecordFailure(ctx, c.Token, c.Rows[0].ID, "boom", time.Hour) // waiting
	require.NoError(t, err)
	c = claim(1)
	_, err = e.store.MarkDead(ctx, c.Token, c.Rows[0].ID, "poison") // dead
	require.NoError(t, err)

	m, err := metrics.New(e.store, metrics.Config{Namespace: "shop"}, nil)
	require.NoError(t, err)
	reg := registry(t, m)

	a, b := labels{"topic": "a"}, labels{"topic": "b"}
	for name, want := range map[string][2]float64{
		"shop_outbox_pending": {1, 2},
		"shop_outbox_waiting": {1, 0},
		"shop_outbox_leased":  {2, 0},
		"shop_outbox_dead":    {1, 0},
	} {
		require.Equal(t, want[0], sample(t, reg, name, a), name+" a")
		require.Equal(t, want[1], sample(t, reg, name, b), name+" b")
	}
	for _, name := range []string{"shop_outbox_oldest_pending_age_seconds", "shop_outbox_oldest_dead_age_seconds"} {
		age := sample(t, reg, name, a)
		require.Positive(t, age, name)
		require.Less(t, age, 60.0, name)
	}
	require.Zero(t, sample(t, reg, "shop_outbox_oldest_dead_age_seconds", b))
	require.Zero(t, sample(t, reg, "shop_outbox_stats_capped", labels{"topic": "a", "group": "undelivered"}))
	require.Zero(t, sample(t, reg, "shop_outbox_stats_refresh_failures_total", nil))
	require.InDelta(t, float64(time.Now().Unix()), sample(t, reg, "shop_outbox_stats_last_refresh_timestamp_seconds", nil), 60)
}

// fakeStats is a StatsSource whose answers the test scripts.
type fakeStats struct {
	calls  atomic.Int32
	answer func(ctx context.Context, call int32) (outbox.Stats, error)
}

func (f *fakeStats) Stats(ctx context.Context) (outbox.Stats, error) {
	return f.answer(ctx, f.calls.Add(1))
}

func oneTopic(pending int) outbox.Stats {
	return outbox.Stats{Topics: []outbox.TopicStats{{Topic: "orders", Pending: pending}}}
}

// Scrapes within RefreshInterval share one read; a failed read keeps the
// last figures and is counted.
func TestStatsCachedAndKeptOnFailure(t *testing.T) {
	t.Parallel()
	src := &fakeStats{answer: func(_ context.Context, call int32) (outbox.Stats, error) {
		if call == 2 {
			return outbox.Stats{}, errors.New("database down")
		}
		return oneTopic(int(call) * 10), nil
	}}
	m, err := metrics.New(src, metrics.Config{RefreshInterval: time.Hour}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	orders := labels{"topic": "orders"}
	for range 3 {
		require.Equal(t, 10.0, sample(t, reg, "outbox_pending", orders))
	}
	require.EqualValues(t, 1, src.calls.Load(), "one read per RefreshInterval")

	// Every scrape reads now (one read each): the second read fails.
	m, err = metrics.New(src, metrics.Config{RefreshInterval: time.Nanosecond}, nil)
	require.NoError(t, err)
	src.calls.Store(0)
	reg = registry(t, m)
	first := gather(t, reg)
	require.Equal(t, 10.0, first("outbox_pending", orders))
	require.Zero(t, first("outbox_stats_refresh_failures_total", nil))
	failed := gather(t, reg)
	require.Equal(t, 10.0, failed("outbox_pending", orders), "the last figures stay")
	require.Equal(t, 1.0, failed("outbox_stats_refresh_failures_total", nil))
	require.Equal(t, first("outbox_stats_last_refresh_timestamp_seconds", nil), failed("outbox_stats_last_refresh_timestamp_seconds", nil),
		"the last successful read")
	require.Equal(t, 30.0, sample(t, reg, "outbox_pending", orders), "the next read works again")
	require.EqualValues(t, 3, src.calls.Load())
}

// A read that hangs holds no scrape longer than RefreshTimeout, and no
// second read starts meanwhile.
func TestStatsOneReadInFlight(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	src := &fakeStats{answer: func(ctx context.Context, _ int32) (outbox.Stats, error) {
		select {
		case <-release:
			return oneTopic(7), nil
		case <-ctx.Done():
			return outbox.Stats{}, ctx.Err()
		}
	}}
	m, err := metrics.New(src, metrics.Config{RefreshInterval: time.Nanosecond, RefreshTimeout: time.Hour}, nil)
	require.NoError(t, err)
	reg := registry(t, m)

	// Several scrapers at once while the read hangs.
	const scrapers = 4
	results := make(chan float64, scrapers)
	for range scrapers {
		go func() { results <- sample(t, reg, "outbox_pending", labels{"topic": "orders"}) }()
	}
	eventually(t, 10*time.Second, "the first read", func() bool { return src.calls.Load() >= 1 })
	require.EqualValues(t, 1, src.calls.Load(), "no second read while one is in flight")
	close(release)
	for range scrapers {
		select {
		case v := <-results:
			// A scraper served by the read in flight sees 7; one that came
			// after it ended may start the next read and see 7 too.
			require.Equal(t, 7.0, v)
		case <-time.After(10 * time.Second):
			t.Fatal("a scrape did not return")
		}
	}
	require.LessOrEqual(t, src.calls.Load(), int32(scrapers))

	// With a short timeout, a hung read gives up and the last figures stay.
	hung := &fakeStats{answer: func(ctx context.Context, call int32) (outbox.Stats, error) {
		if call == 1 {
			return oneTopic(3), nil
		}
		<-ctx.Done()
		return outbox.Stats{}, ctx.Err()
	}}
	m, err = metrics.New(hung, metrics.Config{RefreshInterval: time.Nanosecond, RefreshTimeout: 50 * time.Millisecond}, nil)
	require.NoError(t, err)
	reg = registry(t, m)
	require.Equal(t, 3.0, sample(t, reg, "outbox_pending", labels{"topic": "orders"}))
	start := time.Now()
	require.Equal(t, 3.0, sample(t, reg, "outbox_pending", labels{"topic": "orders"}), "the last figures")
	require.Less(t, time.Since(start), 5*time.Second)
	eventually(t, 10*time.Second, "the timed-out read counted", func() bool {
		return sample(t, reg, "outbox_stats_refresh_failures_total", nil) >= 1
	})
}

func TestNewInvalidConfig(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]metrics.Config{
		"Namespace":       {Namespace: "my-app"},
		"Subsystem":       {Subsystem: "1x"},
		"ConstLabels":     {ConstLabels: prometheus.Labels{"topic": "x"}},
		"RefreshInterval": {RefreshInterval: -time.Second},
		"RefreshTimeout":  {RefreshTimeout: -time.Second},
		"LagBuckets":      {LagBuckets: []float64{1, 0.5}},
		"DurationBuckets": {DurationBuckets: []float64{0.1, 0.1}},
	} {
		_, err := metrics.New(nil, cfg, nil)
		require.ErrorContains(t, err, "invalid config: "+name, name)
	}
	require.NoError(t, metrics.Config{}.Validate())
}

// With metrics on, the per-message observation allocates nothing.
func TestObservePublishAllocatesNothing(t *testing.T) {
	m, err := metrics.New(nil, metrics.Config{}, nil)
	require.NoError(t, err)
	ev := observe.PublishEvent{Handler: handler, Topic: "orders", CreatedAt: time.Now(), ConfirmedAt: time.Now()}
	m.ObservePublish(ev) // makes the series
	require.Zero(t, testing.AllocsPerRun(1000, func() { m.ObservePublish(ev) }))
}

func BenchmarkObservePublish(b *testing.B) {
	m, err := metrics.New(nil, metrics.Config{}, nil)
	require.NoError(b, err)
	now := time.Now()
	ev := observe.PublishEvent{Handler: handler, Topic: "orders", CreatedAt: now.Add(-time.Millisecond), ConfirmedAt: now}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObservePublish(ev)
		}
	})
}

// A router middleware that acks a message without the forwarder's handler
// (as a Deduplicator does) makes an "unhandled" failure; the row is
// retried and published.
func TestRelayMetricsUnhandled(t *testing.T) {
	t.Parallel()
	e := newOutbox(t, fastConfig())
	e.publish(t, "orders", 1)
	m, err := metrics.New(nil, metrics.Config{}, nil)
	require.NoError(t, err)
	reg := registry(t, m)

	router, err := message.NewRouter(message.RouterConfig{}, nil)
	require.NoError(t, err)
	var skipped atomic.Bool
	router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			if skipped.CompareAndSwap(false, true) {
				return nil, nil // acked, never handled
			}
			return h(msg)
		}
	})
	f, err := forwarder.NewForwarder(e.store, &destination{}, forwarder.Config{Router: router, Observer: m}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, f.Close()) }) // runs after the router's
	testenv.Start(t, "router", router)

	orders := labels{"handler_name": handler, "topic": "orders"}
	eventually(t, 30*time.Second, "published after the unhandled delivery", func() bool {
		return sample(t, reg, "outbox_relay_published_total", orders) == 1
	})
	require.Equal(t, 1.0, sample(t, reg, "outbox_relay_failed_total", labels{"topic": "orders", "kind": "unhandled"}))
	require.Equal(t, 2.0, sample(t, reg, "outbox_relay_claimed_total", orders))
}

// A topic that is not UTF-8 (a row another program wrote, or on SQLite)
// never panics the collector or the relay's observer: the label shows
// U+FFFD for the invalid bytes, and scrapes keep working.
func TestInvalidUTF8TopicNeverPanics(t *testing.T) {
	t.Parallel()
	src := &fakeStats{answer: func(context.Context, int32) (outbox.Stats, error) {
		return outbox.Stats{Topics: []outbox.TopicStats{{Topic: "bad\xff", Pending: 2, Dead: 1}}}, nil
	}}
	m, err := metrics.New(src, metrics.Config{}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	require.NotPanics(t, func() {
		m.ObserveClaim(observe.ClaimEvent{Handler: handler, Rows: []relaystore.Row{{ID: 1, Topic: "bad\xff"}}})
		m.ObservePublish(observe.PublishEvent{Handler: handler, Topic: "bad\xfe", CreatedAt: time.Now(), ConfirmedAt: time.Now()})
		m.ObserveFailure(observe.FailureEvent{Handler: handler, Topic: "bad\xfd", Kind: observe.FailureTransient})
		m.ObserveDead(observe.DeadEvent{Handler: handler, Topic: "bad\xfc"})
	})
	var got float64
	require.NotPanics(t, func() { got = sample(t, reg, "outbox_pending", labels{"topic": "bad\uFFFD"}) })
	require.Equal(t, 2.0, got)
	require.Equal(t, 1.0, sample(t, reg, "outbox_relay_claimed_total", labels{"topic": "bad\uFFFD"}))
}

// listeningStats is a StatsSource that reports its LISTEN, as SQLStore does.
type listeningStats struct {
	fakeStats
	state atomic.Int32
}

func (l *listeningStats) ListenState() outbox.ListenState { return outbox.ListenState(l.state.Load()) }

// TestListenGauge: outbox_listen_receiving is 1 while the LISTEN receives,
// 0 when its check found it deaf, and absent while none runs.
func TestListenGauge(t *testing.T) {
	t.Parallel()
	src := &listeningStats{fakeStats: fakeStats{answer: func(context.Context, int32) (outbox.Stats, error) { return oneTopic(1), nil }}}
	m, err := metrics.New(src, metrics.Config{}, nil)
	require.NoError(t, err)
	reg := registry(t, m)
	require.Equal(t, -1.0, sample(t, reg, "outbox_listen_receiving", nil), "absent while no LISTEN runs")
	src.state.Store(int32(outbox.ListenReceiving))
	require.Equal(t, 1.0, sample(t, reg, "outbox_listen_receiving", nil))
	src.state.Store(int32(outbox.ListenDeaf))
	require.Equal(t, 0.0, sample(t, reg, "outbox_listen_receiving", nil))
}
