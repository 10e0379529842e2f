// Package metrics exposes the outbox to Prometheus: the state of the
// table per topic, and what each forwarder's relay does.
//
// New returns a *Metrics, which is a prometheus.Collector — register it on
// your own registry; the package registers nothing globally and serves no
// HTTP — and the forwarder's observer — set it as forwarder.Config.Observer:
//
//	m, err := metrics.New(store, metrics.Config{}, logger)
//	registry.MustRegister(m)
//	fwd, err := forwarder.NewForwarder(store, destination, forwarder.Config{Observer: m}, logger)
//
// Names follow Watermill's components/metrics: snake_case with unit
// suffixes, prefixed by Config.Namespace and Config.Subsystem. Label values
// are bounded: destination topics, forwarder handler names, and the fixed
// sets below; never message UUIDs or partition keys.
//
// The table, per topic, from the store's Stats (StatsSource), read when a
// scrape finds the last figures older than Config.RefreshInterval, one
// read at a time, at most Config.RefreshTimeout long; a failed read keeps
// the last figures:
//
//	outbox_pending{topic}                        rows due now that no relay holds
//	outbox_waiting{topic}                        rows backing off after a failed attempt
//	outbox_leased{topic}                         rows a live relay holds a lease on
//	outbox_orphaned{topic}                       rows still leased to a relay that is gone (heartbeat expired): the next claim takes them over
//	outbox_dead{topic}                           dead rows
//	outbox_oldest_pending_age_seconds{topic}     age of the oldest undelivered row: alert on it
//	outbox_oldest_leased_age_seconds{topic}      age of the oldest leased or orphaned row: how long a key has waited on a lease
//	outbox_oldest_dead_age_seconds{topic}        age of the oldest dead row
//	outbox_backlog{topic}                        undelivered rows; past StatsLimit the planner's estimate
//	outbox_blocked_keys{topic}                   keys held back by a failing (or, strict, dead) head
//	outbox_oldest_blocked_age_seconds{topic}     age of the oldest such head
//	outbox_stats_capped{topic,group}             1 when the counts of group "undelivered" or "dead" stop at watermilloutbox.StatsLimit,
//	                                             or (topic "", group "blocked") the blocked keys at MaxBlockedKeys
//	outbox_stats_last_refresh_timestamp_seconds  last successful read, Unix time
//	outbox_stats_refresh_failures_total          failed or timed-out reads
//	outbox_listen_receiving                      1 while the relay's LISTEN receives commit notifications, 0 when its
//	                                             check found it deaf (a transaction pooler: set ListenURL); absent with no LISTEN
//
// The relay, per forwarder (handler_name is its Config.HandlerName):
//
//	outbox_relay_claimed_total{handler_name,topic}          rows claimed
//	outbox_relay_reclaimed_total{handler_name,topic}        rows claimed after another claim's lease expired (possible duplicates)
//	outbox_relay_published_total{handler_name,topic}        messages the destination accepted
//	outbox_relay_failed_total{handler_name,topic,kind}      failed deliveries; kind: transient, unavailable, permanent, unhandled
//	outbox_relay_dead_total{handler_name,topic}             rows made dead
//	outbox_relay_stale_rows_total{handler_name,operation}   rows a fenced write was rejected for: their claim was stale
//	outbox_relay_taken_over_total{handler_name}             rows claimed from relays declared dead before their lease ended (possible duplicates)
//	outbox_relay_db_errors_total{handler_name,operation}    failed (and retried) claims and fenced writes
//	outbox_relay_lag_seconds{handler_name,topic}            histogram: row insert to the destination's confirmation
//	outbox_relay_claim_duration_seconds{handler_name}       histogram: successful claims
//	outbox_relay_write_duration_seconds{handler_name,operation}  histogram: successful fenced writes (mark_published: the ack writes)
//	outbox_relay_paused{handler_name}                       1 while the destination is unavailable and the relay pauses
//
// operation is "claim" (db_errors only) or one of the fenced writes:
// mark_published, record_failure, mark_dead, release, renew. A failed
// delivery is one verdict on one claimed row: in-process quick retries
// and the probes of a paused relay belong to it. "unavailable" charges no
// attempt (the row is released, typically at shutdown during an outage);
// "unhandled" is a delivery the router acked or nacked without the
// forwarder's handler recording an outcome (a Deduplicator, say),
// charged like "transient".
//
// The lag runs from created_at, written by the database's clock, to the
// moment the destination's Publish returned, by the relay's clock: skew
// between the two shifts it (a negative difference counts as 0). Run the
// relay and the database on NTP-synchronised hosts, or read the lag's
// shape rather than its absolute small values.
//
// The relay's series cost no allocation per message: each message does
// one map lookup, one counter increment and one histogram observation.
package metrics
