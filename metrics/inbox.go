package metrics

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/nilcheck"
)

// InboxStatsSource reads the inbox table's records per consumer;
// *inbox.Inbox implements it.
type InboxStatsSource interface {
	Stats(ctx context.Context) ([]inbox.ConsumerStats, error)
}

// Label names of the inbox metrics.
const (
	labelConsumer = "consumer" // inbox.Config.Consumer
	labelOutcome  = "outcome"  // an inbox.Outcome
)

// Inbox is a prometheus.Collector of the inbox's metrics and the
// inbox.Observer that feeds them: set it as inbox.Config.Observer of one
// or more inboxes (their Consumer tells them apart) and register it.
//
//	inbox_deliveries_total{consumer, outcome}            deliveries: handled, duplicate (dropped without running the handler), failed
//	inbox_delivery_duration_seconds{consumer, outcome}   the whole delivery: transaction, handler, commit
//	inbox_records{consumer}                              records in the table (the dedup window's messages), from Stats
//	inbox_oldest_record_age_seconds{consumer}            age of the oldest record: past the window, a purge is due
//	inbox_stats_refresh_failures_total                   reads of Stats that failed; the gauges keep the last figures
//
// It is safe for concurrent use.
type Inbox struct {
	config Config
	stats  InboxStatsSource // nil: no table gauges
	logger watermill.LoggerAdapter

	deliveries      *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	refreshFailures prometheus.Counter
	records, oldest *prometheus.Desc

	mu     sync.Mutex // one read of Stats at a time
	snap   []inbox.ConsumerStats
	readAt time.Time // of the last read begun
}

var (
	_ prometheus.Collector = (*Inbox)(nil)
	_ inbox.Observer       = (*Inbox)(nil)
)

// NewInbox returns the inbox metrics; stats (usually one of the inboxes:
// Stats covers every consumer of its table) feeds the table gauges, which
// a scrape reads again when they are older than config.RefreshInterval,
// waiting at most config.RefreshTimeout. A nil stats makes the delivery
// metrics alone. config's LagBuckets is not used. A nil logger logs
// nothing.
func NewInbox(stats InboxStatsSource, config Config, logger watermill.LoggerAdapter) (*Inbox, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	for _, l := range []string{labelConsumer, labelOutcome} {
		if _, ok := config.ConstLabels[l]; ok {
			return nil, fmt.Errorf("invalid config: ConstLabels: %q is a label of the metrics already", l)
		}
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if nilcheck.IsNil(stats) {
		stats = nil
	}
	name := func(n string) string { return prometheus.BuildFQName(config.Namespace, config.Subsystem, n) }
	m := &Inbox{config: config, stats: stats, logger: logger}
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: name("inbox_deliveries_total"), ConstLabels: config.ConstLabels,
		Help: "Deliveries the inbox saw, by outcome: handled (applied and committed), duplicate (applied before: acked without running the handler), failed (rolled back and nacked).",
	}, []string{labelConsumer, labelOutcome})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name("inbox_delivery_duration_seconds"), ConstLabels: config.ConstLabels, Buckets: config.DurationBuckets,
		Help: "Duration of a delivery through the inbox: its transaction, the handler and the commit.",
	}, []string{labelConsumer, labelOutcome})
	m.refreshFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: name("inbox_stats_refresh_failures_total"), ConstLabels: config.ConstLabels,
		Help: "Reads of the inbox table's figures that failed or timed out; the gauges keep the last figures.",
	})
	m.records = prometheus.NewDesc(name("inbox_records"), "Records in the inbox table: the messages the consumer applied within the dedup window, not purged yet.", []string{labelConsumer}, config.ConstLabels)
	m.oldest = prometheus.NewDesc(name("inbox_oldest_record_age_seconds"), "Age of the consumer's oldest record, by the database's clock: past the dedup window, a purge is due.", []string{labelConsumer}, config.ConstLabels)
	return m, nil
}

// ObserveDelivery implements inbox.Observer.
func (m *Inbox) ObserveDelivery(e inbox.DeliveryEvent) {
	m.deliveries.WithLabelValues(e.Consumer, string(e.Outcome)).Inc()
	m.duration.WithLabelValues(e.Consumer, string(e.Outcome)).Observe(e.Duration.Seconds())
}

// Describe implements prometheus.Collector.
func (m *Inbox) Describe(ch chan<- *prometheus.Desc) {
	m.deliveries.Describe(ch)
	m.duration.Describe(ch)
	if m.stats != nil {
		m.refreshFailures.Describe(ch)
		ch <- m.records
		ch <- m.oldest
	}
}

// Collect implements prometheus.Collector.
func (m *Inbox) Collect(ch chan<- prometheus.Metric) {
	m.deliveries.Collect(ch)
	m.duration.Collect(ch)
	if m.stats == nil {
		return
	}
	for _, s := range m.current() {
		ch <- prometheus.MustNewConstMetric(m.records, prometheus.GaugeValue, float64(s.Records), s.Consumer)
		ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, s.Oldest.Seconds(), s.Consumer)
	}
	m.refreshFailures.Collect(ch)
}

// current returns the table's figures, read again when older than
// RefreshInterval; a failed read keeps the last ones.
func (m *Inbox) current() []inbox.ConsumerStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.readAt) < m.config.RefreshInterval {
		return m.snap
	}
	m.readAt = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), m.config.RefreshTimeout)
	defer cancel()
	st, err := m.stats.Stats(ctx)
	if err != nil {
		m.refreshFailures.Inc()
		m.logger.Error("Inbox metrics: reading the table's figures failed; serving the last ones", err, nil)
		return m.snap
	}
	m.snap = st
	return st
}
