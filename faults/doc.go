// Package faults holds the fault suite: scenarios that kill relay processes
// with SIGKILL, take PostgreSQL, MariaDB, RabbitMQ and Kafka away mid-drain
// (the real Kafka broker and a node of the three-node cluster of
// scripts/services, killed with SIGKILL and started again with
// scripts/services up), and feed the relay poison messages, then count at
// the broker what arrived against what was committed. Its tests carry the build tag "faults" and
// restart shared services, so they run alone:
//
//	go test -count=1 -p 1 -tags faults ./faults/
//
// Each outage holds /tmp/outbox-services.lock exclusively (tests of others
// hold it shared); on a busy machine the wait for it can pass go test's
// default 10-minute timeout, so .ci/run adds -timeout 30m.
//
// The suite ends with its summary,
//
//	faults: scenarios=<k> lost=<n> duplicates=<n> reordered=<n> dead_wrongly=<n>
//	faults: effects applied exactly once (<broker>): applied=<n> duplicates_dropped=<n> lost=<n> applied_twice=<n> follow_ups_lost=<n> follow_up_duplicates=<n> consumer_kills=<n> relay_kills=<n> broker_restarts=<n>
//	faults: first publish after the broker's (or new leader's) return, longest: kafka=<s> kafka-cluster-isr=<s> kafka-cluster-leader=<s> rabbitmq=<s>
//
// also written to the file named by OUTBOX_FAULTS_SUMMARY when set.
//
// A scenario whose wait times out logs, before it fails, its table's rows
// by state and its checks' last error, pg_stat_activity (read directly),
// PgBouncer's SHOW POOLS, SERVERS and CLIENTS when it goes through
// PgBouncer, and the end of each running relay's log with its goroutines
// (the relay is stopped with SIGQUIT, which makes Go print them all). The
// page docs/guarantees.md states what the scenarios prove, each sentence
// with the scenario behind it.
package faults
