package watermilloutbox

import (
	"context"
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
// IOutboxStorage, with leases and fencing). SQLStore implements it for
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
	// key whose head is blocked); SQLStore's does.
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
	// about once a minute. SQLStore vacuums a PostgreSQL table whose
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
