// Command watermill-outbox operates an outbox table of
// github.com/e0a82c8c/watermill-outbox: it creates the table, shows its
// state, lists, requeues and purges the dead rows, and runs the relay.
//
//	go install github.com/e0a82c8c/watermill-outbox/cmd/watermill-outbox@latest
//
// Commands:
//
//	watermill-outbox migrate                 create the table and its indexes (idempotent)
//	watermill-outbox ddl --dialect postgres  print the DDL, for a migration tool
//	watermill-outbox stats [--json]          per topic: pending, waiting, leased, dead, oldest ages
//	watermill-outbox dead list [--topic T] [--limit N] [--after ID] [--json]
//	watermill-outbox dead requeue (--id ID,... | --topic T | --all) [--yes]
//	watermill-outbox dead purge   (--id ID,... | --topic T | --all) [--yes]
//	watermill-outbox relay [--metrics-addr :9464]
//
// The database is --database-url or OUTBOX_DATABASE_URL: a postgres:// URL,
// a MySQL DSN such as root@tcp(127.0.0.1:3306)/test (or a mysql:// URL), or
// an SQLite file (sqlite:PATH, file:PATH, or a path ending in .db, .sqlite
// or .sqlite3). The table and the relay's settings are the OUTBOX_*
// variables of package config (config.FromEnv); --table overrides
// OUTBOX_TABLE.
//
// Requeue and purge print what they would touch (how many rows, and the
// first few) and change nothing unless --yes is given; they then write
// 1,000 rows per statement (watermilloutbox.DeadBatchSize), each statement
// its own transaction.
//
// The relay runs one forwarder.Forwarder to Kafka (--kafka-brokers,
// OUTBOX_KAFKA_BROKERS) or RabbitMQ (--amqp-url, OUTBOX_AMQP_URL) until
// SIGINT or SIGTERM, retrying the database and the broker until they
// answer. With --metrics-addr it serves Prometheus metrics on /metrics and
// a health check on /healthz: 200 while the database answers and the relay
// has not been paused for an unavailable broker longer than
// --health-max-pause (default 60s), else 503 with the reasons. Behind a
// transaction pooler such as PgBouncer, --listen-database-url
// (OUTBOX_LISTEN_DATABASE_URL) gives the relay PostgreSQL's direct address
// for its LISTEN; without it the relay warns that its LISTEN receives
// nothing, reports it on /healthz and polls.
//
// Exit status: 0 done, 1 failed, 2 bad usage or settings (a database that
// cannot be reached included). Every error is one line naming the flag or
// the variable at fault. A password in a database or broker URL is never
// printed: URLs are shown as postgres://user:***@host/db or
// user:***@tcp(host:3306)/db, in errors, log lines and --help alike.
//
// 'watermill-outbox <command> --help' prints each command's flags.
package main
