package metrics

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// StatsSource reads the outbox table's state per topic.
// *watermilloutbox.SQLStore implements it; a custom Store can too. A
// source that also lists its blocked keys, with SQLStore's method
// BlockedKeys(ctx, outbox.BlockedQuery) ([]outbox.BlockedKey, error),
// gets the blocked-key gauges exported too.
type StatsSource interface {
	Stats(ctx context.Context) (outbox.Stats, error)
}

// blockedSource lists the keys held back by a failing (or, under
// StrictOrder, dead) head: see StatsSource.
type blockedSource interface {
	BlockedKeys(ctx context.Context, q outbox.BlockedQuery) ([]outbox.BlockedKey, error)
}

// listenStater is a StatsSource that reports its LISTEN
// (*watermilloutbox.SQLStore does).
type listenStater interface {
	ListenState() outbox.ListenState
}

// Defaults of Config, and the bound of the blocked-key gauges.
const (
	// DefaultRefreshInterval is how old the table's figures may get before
	// a scrape reads them again.
	DefaultRefreshInterval = 10 * time.Second
	// DefaultRefreshTimeout bounds one read of the table's figures, and
	// how long a scrape waits for it.
	DefaultRefreshTimeout = 5 * time.Second

	// MaxBlockedKeys is the most blocked keys one refresh reads (HeadsOnly,
	// a few index descents each); with more, outbox_stats_capped{group=
	// "blocked"} is 1 and the counts stop there.
	MaxBlockedKeys = 2 * outbox.MaxBlockedPage
)

// Default histogram buckets of Config, in seconds.
var (
	// DefaultLagBuckets are the commit-to-broker lag buckets: a relay
	// woken on commit takes about a millisecond, a polling one up to its
	// PollingInterval, one that retries or waits out an outage seconds to
	// minutes.
	DefaultLagBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

	// DefaultDurationBuckets are the claim and fenced write duration
	// buckets: Watermill's handler execution buckets (0.5ms to 1s) and a
	// few above, for a loaded database.
	DefaultDurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// Config configures New. The zero value is ready to use.
type Config struct {
	// Namespace and Subsystem prefix every metric name, as in Watermill's
	// components/metrics: Namespace "shop" makes "shop_outbox_pending".
	// Default "": no prefix. Letters, digits and '_', not starting with a
	// digit.
	Namespace string
	Subsystem string

	// ConstLabels are added to every metric, for example {"table":
	// "orders_outbox"} to tell two outboxes apart in one registry. Default
	// nil: none. Must not use the labels the metrics have (handler_name,
	// topic, kind, operation, group).
	ConstLabels prometheus.Labels

	// RefreshInterval is how old the table's figures (the Stats gauges)
	// may get: a scrape that finds them older reads them again, one read
	// at a time whatever the number of scrapers; the others are served
	// the figures the read brings, or the last ones. Default
	// DefaultRefreshInterval (10s); zero means the default. Must not be
	// negative.
	RefreshInterval time.Duration

	// RefreshTimeout bounds one read of the table's figures, and how long
	// a scrape waits for it; a read that fails or times out keeps the last
	// figures, counts in outbox_stats_refresh_failures_total and is
	// logged. Default DefaultRefreshTimeout (5s); zero means the default.
	// Must not be negative.
	RefreshTimeout time.Duration

	// LagBuckets are the buckets of outbox_relay_lag_seconds, in seconds,
	// increasing. Default DefaultLagBuckets; nil or empty means the
	// default.
	LagBuckets []float64

	// DurationBuckets are the buckets of outbox_relay_claim_duration_seconds
	// and outbox_relay_write_duration_seconds, in seconds, increasing.
	// Default DefaultDurationBuckets; nil or empty means the default.
	DurationBuckets []float64
}

func (c *Config) setDefaults() {
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.RefreshTimeout == 0 {
		c.RefreshTimeout = DefaultRefreshTimeout
	}
	if len(c.LagBuckets) == 0 {
		c.LagBuckets = DefaultLagBuckets
	}
	if len(c.DurationBuckets) == 0 {
		c.DurationBuckets = DefaultDurationBuckets
	}
}

var nameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// Validate reports every invalid field, naming it. Zero fields are valid:
// they take their defaults.
func (c Config) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{{"Namespace", c.Namespace}, {"Subsystem", c.Subsystem}} {
		if f.v != "" && !nameRE.MatchString(f.v) {
			errs = append(errs, fmt.Errorf("%s: %q is not a metric name part (letters, digits, '_')", f.name, f.v))
		}
	}
	for name := range c.ConstLabels {
		switch {
		case !nameRE.MatchString(name) || len(name) > 1 && name[:2] == "__":
			errs = append(errs, fmt.Errorf("ConstLabels: %q is not a label name", name))
		case slices.Contains(ownLabels, name):
			errs = append(errs, fmt.Errorf("ConstLabels: %q is a label of the metrics already", name))
		}
	}
	if c.RefreshInterval < 0 {
		errs = append(errs, fmt.Errorf("RefreshInterval: must not be negative, got %s", c.RefreshInterval))
	}
	if c.RefreshTimeout < 0 {
		errs = append(errs, fmt.Errorf("RefreshTimeout: must not be negative, got %s", c.RefreshTimeout))
	}
	for _, f := range []struct {
		name string
		b    []float64
	}{{"LagBuckets", c.LagBuckets}, {"DurationBuckets", c.DurationBuckets}} {
		for i, v := range f.b {
			if math.IsNaN(v) || math.IsInf(v, 0) || i > 0 && v <= f.b[i-1] {
				errs = append(errs, fmt.Errorf("%s: must be finite and increasing, got %v", f.name, f.b))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// Label names.
const (
	labelHandler   = "handler_name" // the forwarder's HandlerName, as in Watermill's metrics
	labelTopic     = "topic"        // the destination topic
	labelKind      = "kind"         // observe.FailureKind
	labelOperation = "operation"    // "claim" or a observe.WriteOp
	labelGroup     = "group"        // "undelivered" or "dead"
)

var ownLabels = []string{labelHandler, labelTopic, labelKind, labelOperation, labelGroup}

// opClaim is the operation label of claims in outbox_relay_db_errors_total.
const opClaim = "claim"

// failureKinds are the kind label's values, each counter made up front so
// every series exists from the first failure of a topic on.
var failureKinds = [...]observe.FailureKind{
	observe.FailureTransient, observe.FailureUnavailable, observe.FailurePermanent, observe.FailureUnhandled,
}

// Metrics is a prometheus.Collector of the outbox's metrics (see the
// package documentation for the list) and the forwarder's observer that
// feeds the relay's. Register it on your registry and set it as
// forwarder.Config.Observer of one or more forwarders (their HandlerName
// tells them apart). It is safe for concurrent use.
type Metrics struct {
	config Config
	stats  StatsSource // nil: no table gauges
	logger watermill.LoggerAdapter

	// The table's figures, cached.
	descs struct {
		pending, waiting, leased, orphaned, dead, capped, oldestPending, oldestLeased, oldestDead, refreshed *prometheus.Desc
		backlog, blocked, oldestBlocked                                                                      *prometheus.Desc
		listen                                                                                               *prometheus.Desc
	}
	blockedSrc      blockedSource // nil: no blocked-key gauges
	refreshFailures prometheus.Counter
	mu              sync.Mutex
	snap            outbox.Stats
	blocked         map[string]blockedTopic // per topic, of the last read
	blockedCapped   bool
	seen            map[string]bool // topics ever read: their gauges read 0 once the rows are gone
	snapAt          time.Time       // of the last successful read
	attemptAt       time.Time       // of the last read begun
	refreshing      chan struct{}   // closed when the read in flight ends; nil: none
	failing         int             // consecutive failed reads, for logging

	// The relay's.
	claimed, reclaimed, published, dead *prometheus.CounterVec
	failed                              *prometheus.CounterVec
	staleRows, dbErrors, takenOver      *prometheus.CounterVec
	lag                                 *prometheus.HistogramVec
	claimDuration, writeDuration        *prometheus.HistogramVec
	paused, lastBeat                    *prometheus.GaugeVec
	beatFailures, lapses                *prometheus.CounterVec

	// Children of the vectors per handler and topic, looked up on every
	// message without a lock or an allocation: a copy-on-write map.
	topics   atomic.Pointer[map[seriesKey]*topicSeries]
	topicsMu sync.Mutex
}

type seriesKey struct{ handler, topic string }

// blockedTopic is one topic's blocked keys.
type blockedTopic struct {
	keys   int
	oldest time.Duration
}

type topicSeries struct {
	claimed, reclaimed, published, dead prometheus.Counter
	failed                              [len(failureKinds)]prometheus.Counter
	lag                                 prometheus.Observer
}

var (
	_ prometheus.Collector = (*Metrics)(nil)
	_ observe.Observer     = (*Metrics)(nil)
)

// New returns the metrics of the outbox whose table stats reads (usually
// the *watermilloutbox.SQLStore the forwarder runs on); a nil stats makes
// the relay metrics alone. Register the result on your registry; nothing
// is registered globally and no HTTP server is started. A nil logger logs
// nothing.
func New(stats StatsSource, config Config, logger watermill.LoggerAdapter) (*Metrics, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if nilcheck.IsNil(stats) {
		stats = nil // a nil *SQLStore
	}
	m := &Metrics{config: config, stats: stats, logger: logger, seen: map[string]bool{}}
	m.blockedSrc, _ = stats.(blockedSource)
	m.topics.Store(&map[seriesKey]*topicSeries{})

	name := func(n string) string { return prometheus.BuildFQName(config.Namespace, config.Subsystem, n) }
	desc := func(n, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name(n), help, labels, config.ConstLabels)
	}
	d := &m.descs
	d.pending = desc("outbox_pending", "Undelivered rows due now that no relay holds, per topic.", labelTopic)
	d.waiting = desc("outbox_waiting", "Undelivered rows backing off after a failed attempt, not due yet, per topic.", labelTopic)
	d.leased = desc("outbox_leased", "Undelivered rows a live relay holds a lease on, per topic.", labelTopic)
	d.orphaned = desc("outbox_orphaned", "Undelivered rows still leased to a relay that is gone (its heartbeat expired), per topic: the next claim of a live relay takes them over; if this stays above zero, no relay is claiming.", labelTopic)
	d.dead = desc("outbox_dead", "Dead rows (the relay gave up on them; see ListDead, Requeue), per topic.", labelTopic)
	d.capped = desc("outbox_stats_capped", "1 when the topic's undelivered (group=\"undelivered\") or dead (group=\"dead\") rows exceed the rows Stats reads, so the row gauges count only that many (watermilloutbox.StatsLimit).", labelTopic, labelGroup)
	d.oldestPending = desc("outbox_oldest_pending_age_seconds", "Age of the topic's oldest undelivered row, by the database's clock.", labelTopic)
	d.oldestLeased = desc("outbox_oldest_leased_age_seconds", "Age of the topic's oldest leased (or orphaned) row since it was written, by the database's clock: how long a key has waited on a lease.", labelTopic)
	d.oldestDead = desc("outbox_oldest_dead_age_seconds", "Age of the topic's oldest dead row since it was written, by the database's clock.", labelTopic)
	d.backlog = desc("outbox_backlog", "Undelivered rows (pending + waiting + leased), per topic: counted up to watermilloutbox.StatsLimit, past it (outbox_stats_capped{group=\"undelivered\"} 1) the database planner's estimate.", labelTopic)
	d.blocked = desc("outbox_blocked_keys", "Partition keys held back by a head that is backing off or (StrictOrder) dead, per topic; counted up to metrics.MaxBlockedKeys over all topics (outbox_stats_capped{group=\"blocked\"}).", labelTopic)
	d.oldestBlocked = desc("outbox_oldest_blocked_age_seconds", "Age of the oldest head holding a key back, per topic, by the database's clock; 0 when none.", labelTopic)
	d.refreshed = desc("outbox_stats_last_refresh_timestamp_seconds", "When the table's figures were last read successfully, Unix time.")
	d.listen = desc("outbox_listen_receiving", "1 while the relay's LISTEN receives commit notifications (a notification it sent itself after its last (re)connect arrived), 0 when it does not (likely a transaction pooler: set ListenURL, OUTBOX_LISTEN_DATABASE_URL) and the relay only polls; absent while no LISTEN runs (MySQL, SQLite, DisableNotify) or before its first check.")
	m.refreshFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: name("outbox_stats_refresh_failures_total"), ConstLabels: config.ConstLabels,
		Help: "Reads of the table's figures that failed or timed out; the gauges keep the last figures read.",
	})

	counter := func(n, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name(n), Help: help, ConstLabels: config.ConstLabels}, labels)
	}
	m.claimed = counter("outbox_relay_claimed_total", "Rows the relay claimed.", labelHandler, labelTopic)
	m.reclaimed = counter("outbox_relay_reclaimed_total", "Rows the relay claimed after another claim's lease on them expired (a relay crashed, stalled or lost its database): possibly published twice.", labelHandler, labelTopic)
	m.published = counter("outbox_relay_published_total", "Messages the destination accepted.", labelHandler, labelTopic)
	m.failed = counter("outbox_relay_failed_total", "Deliveries the destination did not accept, by kind: transient (an attempt charged, retried), unavailable (each attempt that found the destination unreachable, as it happens; nothing charged), permanent (dead at once), unhandled (the router acked or nacked without the forwarder's handler; charged as transient).", labelHandler, labelTopic, labelKind)
	m.dead = counter("outbox_relay_dead_total", "Rows the relay made dead.", labelHandler, labelTopic)
	m.staleRows = counter("outbox_relay_stale_rows_total", "Rows a fenced write was rejected for because their claim was stale (the lease expired and another claim took them over), by write.", labelHandler, labelOperation)
	m.takenOver = counter("outbox_relay_taken_over_total", "Rows the relay claimed from relays declared dead (their heartbeat expired) before those rows' lease ended: possibly published twice. Also counted in outbox_relay_reclaimed_total.", labelHandler)
	m.dbErrors = counter("outbox_relay_db_errors_total", "Claims and fenced writes that failed and were retried.", labelHandler, labelOperation)
	m.lag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name("outbox_relay_lag_seconds"), ConstLabels: config.ConstLabels, Buckets: config.LagBuckets,
		Help: "From the row's insert (the database's clock) to the destination's confirmation (the relay's clock); clock skew between the two shifts it, and a negative difference counts as 0.",
	}, []string{labelHandler, labelTopic})
	m.claimDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name("outbox_relay_claim_duration_seconds"), ConstLabels: config.ConstLabels, Buckets: config.DurationBuckets,
		Help: "Duration of the relay's successful claims.",
	}, []string{labelHandler})
	m.writeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name("outbox_relay_write_duration_seconds"), ConstLabels: config.ConstLabels, Buckets: config.DurationBuckets,
		Help: "Duration of the relay's successful fenced writes, by write (operation=\"mark_published\": the batched ack writes).",
	}, []string{labelHandler, labelOperation})
	m.paused = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: name("outbox_relay_paused"), ConstLabels: config.ConstLabels,
		Help: "1 while the relay pauses because the destination is unavailable (the circuit is open), else 0.",
	}, []string{labelHandler})
	m.lastBeat = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: name("outbox_relay_heartbeat_timestamp_seconds"), ConstLabels: config.ConstLabels,
		Help: "When the relay's last heartbeat that landed in the relay registry was sent, Unix time (relay's clock). Older than the relay timeout (RelayTimeout, 3s): other relays may take its rows over.",
	}, []string{labelHandler})
	m.beatFailures = counter("outbox_relay_heartbeat_failures_total", "Heartbeats of the relay that failed (the database did not answer in time); the relay beats again RelayTimeout/3 later.", labelHandler)
	m.lapses = counter("outbox_relay_lapses_total", "Times the relay found it had been declared dead (its heartbeat had expired: paused, or cut off from the database, longer than RelayTimeout): it gave back the rows it had not handed out and registered again; what it was publishing may go out twice.", labelHandler)
	return m, nil
}

func (m *Metrics) vectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.claimed, m.reclaimed, m.published, m.failed, m.dead, m.staleRows, m.dbErrors, m.takenOver,
		m.lag, m.claimDuration, m.writeDuration, m.paused, m.lastBeat, m.beatFailures, m.lapses,
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.vectors() {
		c.Describe(ch)
	}
	if m.stats == nil {
		return
	}
	d := &m.descs
	for _, desc := range []*prometheus.Desc{d.pending, d.waiting, d.leased, d.orphaned, d.dead, d.capped, d.oldestPending, d.oldestLeased, d.oldestDead, d.refreshed, d.backlog} {
		ch <- desc
	}
	if m.blockedSrc != nil {
		ch <- d.blocked
		ch <- d.oldestBlocked
	}
	if _, ok := m.stats.(listenStater); ok {
		ch <- d.listen
	}
	m.refreshFailures.Describe(ch)
}

// Collect implements prometheus.Collector. The table's figures are read
// again when older than RefreshInterval (see Config).
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.vectors() {
		c.Collect(ch)
	}
	if m.stats == nil {
		return
	}
	stats, blocked, blockedCapped, seen, at := m.current()
	d := &m.descs
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		for i, l := range labels {
			labels[i] = labelValue(l)
		}
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	// Every topic ever read, its gauges 0 once its rows are gone: "no
	// backlog" reads 0, not as missing data.
	byTopic := make(map[string]outbox.TopicStats, len(seen))
	for _, t := range stats.Topics {
		byTopic[t.Topic] = t
	}
	for _, topic := range seen {
		t := byTopic[topic]
		t.Topic = topic
		gauge(d.pending, float64(t.Pending), t.Topic)
		gauge(d.waiting, float64(t.Waiting), t.Topic)
		gauge(d.leased, float64(t.Leased), t.Topic)
		gauge(d.orphaned, float64(t.Orphaned), t.Topic)
		gauge(d.dead, float64(t.Dead), t.Topic)
		gauge(d.capped, flag(t.BacklogCapped), t.Topic, "undelivered")
		gauge(d.capped, flag(t.DeadCapped), t.Topic, "dead")
		gauge(d.oldestPending, t.OldestPending.Seconds(), t.Topic)
		gauge(d.oldestLeased, t.OldestLeased.Seconds(), t.Topic)
		gauge(d.oldestDead, t.OldestDead.Seconds(), t.Topic)
		backlog := float64(t.Undelivered())
		if t.BacklogEstimate > 0 {
			backlog = float64(t.BacklogEstimate)
		}
		gauge(d.backlog, backlog, t.Topic)
		if m.blockedSrc != nil {
			b := blocked[topic]
			gauge(d.blocked, float64(b.keys), topic)
			gauge(d.oldestBlocked, b.oldest.Seconds(), topic)
		}
	}
	if m.blockedSrc != nil {
		gauge(d.capped, flag(blockedCapped), "", "blocked")
	}
	if !at.IsZero() {
		gauge(d.refreshed, float64(at.UnixNano())/1e9)
	}
	if l, ok := m.stats.(listenStater); ok && l.ListenState() != outbox.ListenOff {
		gauge(d.listen, flag(l.ListenState() == outbox.ListenReceiving))
	}
	m.refreshFailures.Collect(ch)
}

// current returns the table's figures and when they were read, reading
// them first if they are older than RefreshInterval and no read is in
// flight; it waits at most RefreshTimeout for a read in flight.
func (m *Metrics) current() (outbox.Stats, map[string]blockedTopic, bool, []string, time.Time) {
	m.mu.Lock()
	if m.refreshing == nil && time.Since(m.attemptAt) >= m.config.RefreshInterval {
		m.refreshing = make(chan struct{})
		m.attemptAt = time.Now()
		go m.refresh(m.refreshing)
	}
	wait := m.refreshing
	m.mu.Unlock()
	if wait != nil {
		t := time.NewTimer(m.config.RefreshTimeout)
		select {
		case <-wait:
		case <-t.C:
		}
		t.Stop()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := make([]string, 0, len(m.seen))
	for topic := range m.seen {
		seen = append(seen, topic)
	}
	slices.Sort(seen)
	return m.snap, m.blocked, m.blockedCapped, seen, m.snapAt
}

// refresh reads the table's figures once; a failure keeps the last ones.
func (m *Metrics) refresh(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), m.config.RefreshTimeout)
	defer cancel()
	stats, err := m.stats.Stats(ctx)
	var blocked map[string]blockedTopic
	var capped bool
	if err == nil && m.blockedSrc != nil {
		blocked, capped, err = m.readBlocked(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	defer close(done)
	m.refreshing = nil
	if err != nil {
		m.refreshFailures.Inc()
		m.failing++
		// Once per run of failures at error level; they are counted anyway.
		if m.failing == 1 {
			m.logger.Error("Outbox metrics: reading the table's figures failed; serving the last ones", err, nil)
		} else {
			m.logger.Debug("Outbox metrics: reading the table's figures failed again: "+err.Error(),
				watermill.LogFields{"consecutive_failures": m.failing})
		}
		return
	}
	if m.failing > 0 {
		m.logger.Info("Outbox metrics: reading the table's figures works again", watermill.LogFields{"failures": m.failing})
	}
	m.failing = 0
	m.snap, m.blocked, m.blockedCapped, m.snapAt = stats, blocked, capped, time.Now()
	for _, t := range stats.Topics {
		m.seen[t.Topic] = true
	}
	for topic := range blocked {
		m.seen[topic] = true
	}
}

// readBlocked reads up to MaxBlockedKeys blocked keys, heads only, and
// sums them up per topic.
func (m *Metrics) readBlocked(ctx context.Context) (map[string]blockedTopic, bool, error) {
	out := map[string]blockedTopic{}
	q := outbox.BlockedQuery{Limit: outbox.MaxBlockedPage, HeadsOnly: true}
	for read := 0; read < MaxBlockedKeys; {
		page, err := m.blockedSrc.BlockedKeys(ctx, q)
		if err != nil {
			return nil, false, fmt.Errorf("blocked keys: %w", err)
		}
		for _, b := range page {
			t := out[b.Topic]
			t.keys++
			t.oldest = max(t.oldest, b.HeadAge)
			out[b.Topic] = t
		}
		read += len(page)
		if len(page) < q.Limit {
			return out, false, nil
		}
		q.AfterTopic, q.AfterKey = page[len(page)-1].Topic, page[len(page)-1].Key
	}
	return out, true, nil
}

// topic returns the series of one handler and topic, making them on first
// use.
func (m *Metrics) topic(handler, topic string) *topicSeries {
	if s, ok := (*m.topics.Load())[seriesKey{handler, topic}]; ok {
		return s
	}
	m.topicsMu.Lock()
	defer m.topicsMu.Unlock()
	old := *m.topics.Load()
	key := seriesKey{handler, topic}
	if s, ok := old[key]; ok {
		return s
	}
	tl := labelValue(topic)
	s := &topicSeries{
		claimed:   m.claimed.WithLabelValues(handler, tl),
		reclaimed: m.reclaimed.WithLabelValues(handler, tl),
		published: m.published.WithLabelValues(handler, tl),
		dead:      m.dead.WithLabelValues(handler, tl),
		lag:       m.lag.WithLabelValues(handler, tl),
	}
	for i, k := range failureKinds {
		s.failed[i] = m.failed.WithLabelValues(handler, tl, string(k))
	}
	next := make(map[seriesKey]*topicSeries, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = s
	m.topics.Store(&next)
	return s
}

// ObserveClaim is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObserveClaim(e observe.ClaimEvent) {
	if e.Err != nil {
		m.dbErrors.WithLabelValues(e.Handler, opClaim).Inc()
		return
	}
	m.claimDuration.WithLabelValues(e.Handler).Observe(e.Duration.Seconds())
	m.paused.WithLabelValues(e.Handler) // 0 from the first claim on, not absent until a pause
	if e.TakenOver > 0 {
		m.takenOver.WithLabelValues(e.Handler).Add(float64(e.TakenOver))
	}
	// Rows of a topic mostly come in runs: one lookup and one Add per run.
	for i := 0; i < len(e.Rows); {
		topic := e.Rows[i].Topic
		n, reclaimed := 0, 0
		for ; i < len(e.Rows) && e.Rows[i].Topic == topic; i++ {
			n++
			if e.Rows[i].Reclaimed {
				reclaimed++
			}
		}
		s := m.topic(e.Handler, topic)
		s.claimed.Add(float64(n))
		if reclaimed > 0 {
			s.reclaimed.Add(float64(reclaimed))
		}
	}
}

// ObservePublish is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObservePublish(e observe.PublishEvent) {
	s := m.topic(e.Handler, e.Topic)
	s.published.Inc()
	s.lag.Observe(max(e.ConfirmedAt.Sub(e.CreatedAt), 0).Seconds())
}

// ObserveFailure is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObserveFailure(e observe.FailureEvent) {
	s := m.topic(e.Handler, e.Topic)
	for i, k := range failureKinds {
		if k == e.Kind {
			s.failed[i].Inc()
			return
		}
	}
	s.failed[0].Inc() // a kind this version does not know: transient
}

// ObserveDead is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObserveDead(e observe.DeadEvent) {
	m.topic(e.Handler, e.Topic).dead.Inc()
}

// ObserveWrite is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObserveWrite(e observe.WriteEvent) {
	if e.Err != nil {
		m.dbErrors.WithLabelValues(e.Handler, string(e.Op)).Inc()
		return
	}
	m.writeDuration.WithLabelValues(e.Handler, string(e.Op)).Observe(e.Duration.Seconds())
	if n := e.Stale(); n > 0 {
		m.staleRows.WithLabelValues(e.Handler, string(e.Op)).Add(float64(n))
	}
}

// ObservePause is the forwarder's observer hook (forwarder.Config.Observer).
func (m *Metrics) ObservePause(e observe.PauseEvent) {
	v := 0.0
	if e.Paused {
		v = 1
	}
	m.paused.WithLabelValues(e.Handler).Set(v)
}

// ObserveBeat implements observe.Observer.
// Both counters exist from the first beat on, at 0, so that an alert on
// their increase sees the first one.
func (m *Metrics) ObserveBeat(e observe.BeatEvent) {
	failures, lapses := m.beatFailures.WithLabelValues(e.Handler), m.lapses.WithLabelValues(e.Handler)
	switch {
	case e.Err != nil:
		failures.Inc()
		return
	case e.Lapsed:
		lapses.Inc()
	}
	m.lastBeat.WithLabelValues(e.Handler).Set(float64(e.Sent.UnixNano()) / 1e9)
}

// labelValue makes a topic, which comes from the table, a valid label
// value: Prometheus panics on one that is not UTF-8, and a row written by
// another program (or on SQLite) may hold anything. Invalid bytes become
// U+FFFD.
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
