// Package relaystore is the storage port the relay (package forwarder)
// works through: Store, the rows it claims and the fenced writes that
// settle them, and the optional RelayRegistry of live relays.
//
// watermilloutbox.SQLStore implements Store and RelayRegistry for
// PostgreSQL, MySQL/MariaDB and SQLite; a service passes it to
// forwarder.NewForwarder and never names this package. Implement Store to
// put the outbox in another database, and run package storetest against
// the implementation: it checks the contract stated here.
package relaystore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// Row is one outbox row, as claimed by a relay.
type Row struct {
	// ID is the row's sequence number: the order rows were written in.
	ID int64
	// UUID, Topic, Payload and Metadata are the message as published.
	UUID     string
	Topic    string
	Payload  []byte
	Metadata message.Metadata
	// PartitionKey is the ordering (and Kafka) key; "" means none.
	PartitionKey string
	// CreatedAt is when the publishing transaction inserted the row
	// (database clock).
	CreatedAt time.Time
	// Attempts counts the failed publish attempts before this claim.
	Attempts int
	// Reclaimed reports that the row still held an earlier claim whose
	// lease had expired, or whose relay was declared dead (its heartbeat
	// expired, see RelayRegistry): a relay claimed it and never settled it
	// (it crashed, stalled or lost its database). It may have been
	// published already, so this delivery may be a duplicate.
	Reclaimed bool
}

// Claimed is what one Store.Claim took.
type Claimed struct {
	// Token is the claim's fencing token: every later write for the rows
	// names it (see Store).
	Token string
	// Rows are the claimed rows, in id order.
	Rows []Row
	// More reports that due rows may remain which this claim did not take:
	// it took as many as it was allowed, or stopped at its scan budget. The
	// relay then claims again at once instead of waiting for its next poll.
	More bool
	// TakenOver counts, per relay id, the rows this claim took from
	// relays declared dead (their heartbeat expired) before those rows'
	// lease had ended; nil when none.
	TakenOver map[string]int
}

// ClaimRequest says which rows Store.Claim may take.
type ClaimRequest struct {
	// Topics restricts the claim to some destination topics; the zero
	// value claims every topic.
	Topics TopicFilter
	// Limit is the most rows to claim; at least 1.
	Limit int
	// Lease is how long the claim holds before another relay may take the
	// rows over, unless the relay is declared dead first (see Relay).
	Lease time.Duration
	// Relay is the claiming relay's id in the store's RelayRegistry,
	// recorded with the claim: once the relay's heartbeat expires, other
	// claims take its rows whatever their lease says. "" (the default)
	// claims for no registered relay: the rows are held by the lease
	// alone. At most 64 letters, digits and . _ : -.
	Relay string
	// Ordered keeps per-key order: a row with a partition key is claimed
	// only when every earlier pending row with the same topic and key is
	// claimed in the same call. Rows come back in ID order.
	Ordered bool
	// StrictOrder, with Ordered, makes a dead row hold its key too: a row
	// with a partition key is not claimed while an earlier row of its topic
	// and key is dead (config.Config.StrictOrder).
	StrictOrder bool
}

// Store is the storage port the relay works through (the original plugin's
// IOutboxStorage, with leases and fencing). watermilloutbox.SQLStore implements it for
// PostgreSQL, MySQL/MariaDB and SQLite; implement it to put the outbox in
// another database, and run package storetest against the implementation.
//
// Every write after Claim names the claim token, and affects only rows that
// still hold it: a relay whose lease expired, and whose rows another relay
// re-claimed, cannot overwrite the other's outcome. Each method returns how
// many rows it changed; fewer than asked means the lease of the others was
// lost. Implementations must use the database's clock for leases and
// backoff, so relays on hosts with skewed clocks agree.
type Store interface {
	// Config returns the settings the store was built with. The relay
	// built on the store runs by them (polling, batch size, retry budget,
	// lease, backoff, retention, in-flight window, ordering, wake-ups), so
	// every setting is stated once, where the store is made.
	Config() config.Config

	// Claim takes up to req.Limit pending rows that are due (available_at
	// passed) and not under a live lease (a lease whose relay was declared
	// dead is not live, see RelayRegistry), writes a fresh claim token and a
	// lease of req.Lease, and commits before returning. It holds no lock or
	// transaction afterwards. Its cost should follow the rows it returns,
	// not the rows it passes over (backing off, leased, or queued behind a
	// key whose head is blocked); watermilloutbox.SQLStore's does.
	Claim(ctx context.Context, req ClaimRequest) (Claimed, error)

	// MarkPublished records that the broker confirmed the rows: with keep
	// they become published (published_at set, for PurgePublished to delete
	// after the retention), without it they are deleted at once.
	MarkPublished(ctx context.Context, token string, ids []int64, keep bool) (int, error)

	// RecordFailure charges one failed attempt to the row, stores lastError,
	// makes it due again after delay, and releases the claim at once. The
	// row stays pending; while it waits out the delay, a later row of its
	// key is not claimed by an ordered claim.
	RecordFailure(ctx context.Context, token string, id int64, lastError string, delay time.Duration) (int, error)

	// MarkDead charges the final attempt and moves the row to the dead
	// state, keeping lastError. Dead rows are never claimed again until
	// requeued.
	MarkDead(ctx context.Context, token string, id int64, lastError string) (int, error)

	// Renew extends the lease of claimed rows to now + lease.
	Renew(ctx context.Context, token string, ids []int64, lease time.Duration) (int, error)

	// Release gives claimed rows back without charging an attempt, due at
	// once.
	Release(ctx context.Context, token string, ids []int64) (int, error)

	// PurgePublished deletes up to limit published rows older than
	// olderThan, returning how many it deleted.
	PurgePublished(ctx context.Context, olderThan time.Duration, limit int) (int, error)

	// Maintain does what the table needs now to stay in shape, if
	// anything, and is cheap when nothing is needed; the relay calls it
	// about once a minute. watermilloutbox.SQLStore vacuums a PostgreSQL table whose
	// autovacuum is off. A store that needs nothing returns nil.
	Maintain(ctx context.Context) error

	// Listen is the store's feed of commit notifications: it calls wake
	// whenever rows may have been committed, and once each time it
	// (re)connects, until ctx ends; then it returns ctx's error. A store
	// without such a feed returns ErrNoWakeUps at once, and the relay
	// finds new rows by polling. A decorator that embeds a Store passes
	// the feed on unchanged.
	Listen(ctx context.Context, wake func()) error
}

// Errors a Store returns or marks.
var (
	// ErrNoWakeUps is returned by Store.Listen when the store has no commit
	// notifications (MySQL, SQLite, DisableNotify): the relay polls.
	ErrNoWakeUps = errors.New("outbox: the store sends no commit notifications")

	// ErrContention marks a database error that only says a concurrent
	// transaction got in the way: a deadlock, a serialization failure, a
	// lock wait timeout, SQLite's busy or locked. Retrying is the whole
	// answer, so the relay logs such errors below error level and counts
	// them. watermilloutbox.SQLStore wraps them with it (errors.Is(err, ErrContention)); a
	// custom Store may do the same with its own.
	ErrContention = errors.New("outbox: database contention")
)

// RelayRegistry is implemented by stores that know which relays are alive:
// watermilloutbox.SQLStore. The relay (forwarder.Subscriber) beats through it and names
// itself in every claim (ClaimRequest.Relay). With a store that does not
// implement it (or a decorator that hides it), a dead relay's rows come
// back when their lease ends.
type RelayRegistry interface {
	// Beat records that relay id is alive until ttl from now (database
	// clock), registering it if it is not known. It reports whether the
	// relay's previous beat had expired (Beat.Lapsed).
	Beat(ctx context.Context, id string, ttl time.Duration) (Beat, error)
	// Leave marks relay id gone at once, on a clean shutdown: rows it
	// still holds are claimable now.
	Leave(ctx context.Context, id string) error
}

// Beat is what one RelayRegistry.Beat found.
type Beat struct {
	// Lapsed reports that the relay's previous beat had expired before
	// this one: other relays may have taken its rows over (its writes for
	// them are fenced), and it was registered again.
	Lapsed bool
	// TTL is how long this beat keeps the relay alive: the ttl asked for,
	// or longer where the store needs it (15 s at least on SQLite).
	TTL time.Duration
}

// TopicFilter selects destination topics: by exact name (Names) and by
// prefix (Prefixes). A topic matches when it is one of the names or starts
// with one of the prefixes. The zero value matches every topic.
//
// Ordering is per topic and key, so a filter never splits a key's rows
// between relays: relays with disjoint filters share one table safely.
type TopicFilter struct {
	Names    []string
	Prefixes []string
}

// All reports whether f matches every topic.
func (f TopicFilter) All() bool { return len(f.Names) == 0 && len(f.Prefixes) == 0 }

// Match reports whether topic passes f.
func (f TopicFilter) Match(topic string) bool {
	if f.All() || slices.Contains(f.Names, topic) {
		return true
	}
	for _, p := range f.Prefixes {
		if strings.HasPrefix(topic, p) {
			return true
		}
	}
	return false
}

// String renders f as patterns, as forwarder.Config.Topics takes them.
func (f TopicFilter) String() string {
	if f.All() {
		return "*"
	}
	parts := slices.Clone(f.Names)
	for _, p := range f.Prefixes {
		parts = append(parts, p+"*")
	}
	return strings.Join(parts, ",")
}
