package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

// Defaults, and the bounds Validate enforces.
const (
	// DefaultTable is the outbox table used when Config.Table is empty.
	DefaultTable = "watermill_outbox"

	// DefaultPollingInterval is how long an idle relay waits between polls.
	DefaultPollingInterval = time.Second

	// DefaultBatchSize is how many rows one claim query takes.
	DefaultBatchSize = 100

	// MaxBatchSize bounds BatchSize: a claim is one statement and one
	// transaction, and a huge one holds row locks for too long.
	MaxBatchSize = 10000

	// DefaultMaxRetryCount is how many failed publish attempts a row gets
	// before it is dead.
	DefaultMaxRetryCount = 5

	// DefaultClaimTimeout is how long a relay owns the rows it claimed.
	DefaultClaimTimeout = 300 * time.Second

	// DefaultRetryBackoffMin is the backoff after a row's first failed
	// attempt.
	DefaultRetryBackoffMin = time.Second

	// DefaultRetryBackoffMax caps the backoff between failed attempts.
	DefaultRetryBackoffMax = 60 * time.Second

	// DefaultMaxInFlight is how many messages a relay subscriber hands to
	// the publisher before waiting for acks. A broker round trip takes
	// milliseconds, so the window sets the drain rate: 1,000 messages of a
	// few kilobytes cost a few megabytes and drained a backlog to RabbitMQ
	// at 12k/s where 256 reached 9.5k/s.
	DefaultMaxInFlight = 1000

	// DefaultMaxMetadataBytes bounds a message's metadata: half of
	// RabbitMQ's default frame_max (131072 bytes), which must hold the
	// headers with the other message properties, and far below Kafka's
	// default message.max.bytes (about 1 MB).
	DefaultMaxMetadataBytes = 64 << 10

	// DefaultMaxInFlightBytes bounds the payload and metadata bytes a relay
	// subscriber holds: a backlog of large messages then costs about this
	// much memory, not MaxInFlight times the largest message.
	DefaultMaxInFlightBytes = 64 << 20

	// DefaultNotifyInterval is how soon after a commit notification the
	// relay looks again; a publisher sends at most two per interval.
	DefaultNotifyInterval = 5 * time.Millisecond

	// MaxNotifyInterval bounds NotifyInterval: past it polling does as well.
	MaxNotifyInterval = time.Second

	// DefaultUnavailableBackoffMax caps the relay's pause while the
	// destination is unavailable: with it a relay resumes within about a
	// second of the broker's return (measured by the fault suite), at the
	// cost of one probe publish a second during an outage.
	DefaultUnavailableBackoffMax = time.Second

	// DefaultRelayTimeout is how long a relay may go without a heartbeat
	// before other relays take its rows over.
	DefaultRelayTimeout = 3 * time.Second

	// DefaultEnvPrefix is the prefix of the variables FromEnv reads.
	DefaultEnvPrefix = "OUTBOX_"

	// minRelayTimeout keeps the heartbeat (a third of the timeout) from
	// turning into a busy loop against the database.
	minRelayTimeout = 100 * time.Millisecond

	// minUnavailableBackoffMax keeps the probes of a relay whose broker is
	// down from turning into a busy loop.
	minUnavailableBackoffMax = 10 * time.Millisecond
)

// Lower bounds Validate enforces on durations.
const (
	// minPollingInterval stops a misconfigured relay from polling in a busy
	// loop against the database.
	minPollingInterval = time.Millisecond

	// minClaimTimeout keeps a lease from expiring before a publish can
	// finish, which would make every row a duplicate.
	minClaimTimeout = time.Second

	// minNotifyInterval keeps the relay's re-check after a wake-up from
	// becoming a busy loop.
	minNotifyInterval = 100 * time.Microsecond
)

// Config configures the outbox. The zero value is usable after SetDefaults.
//
// The env tags name the variables FromEnv reads, without their prefix.
type Config struct {
	// Table is the outbox table, optionally schema-qualified
	// ("app.outbox"). It is written into SQL, so it must be a plain SQL
	// identifier: letters, digits and underscores, not starting with a
	// digit, at most 48 characters, optionally qualified by a schema of the
	// same form. Default DefaultTable ("watermill_outbox"); empty means
	// the default.
	Table string `env:"TABLE"`

	// PollingInterval is how often the relay polls the table while idle.
	// Shorter means lower latency and more queries. Default
	// DefaultPollingInterval (1s); zero means the default. Minimum 1ms.
	PollingInterval time.Duration `env:"POLLING_INTERVAL_SECONDS"`

	// BatchSize is how many rows one claim query takes, in rows. While a
	// backlog drains (a claim came back full) the relay claims as many as
	// its in-flight window has room for (up to MaxInFlight), as a claim
	// costs little more for more rows. Default DefaultBatchSize (100); zero
	// means the default. At most MaxBatchSize (10000).
	BatchSize int `env:"BATCH_SIZE"`

	// MaxRetryCount is how many failed publish attempts a row gets before it
	// is marked dead and no longer retried. Default DefaultMaxRetryCount
	// (5); zero means the default. Minimum 1.
	MaxRetryCount int `env:"MAX_RETRY_COUNT"`

	// ClaimTimeout is the lease of a claim: rows a relay claimed and has not
	// finished within it may be claimed by another relay, so it must exceed
	// the longest publish. Default DefaultClaimTimeout (300s); zero means
	// the default. Minimum 1s.
	ClaimTimeout time.Duration `env:"CLAIM_TIMEOUT_SECONDS"`

	// RetryBackoffMin is the wait after a row's first failed attempt; the
	// wait grows exponentially, with jitter, up to RetryBackoffMax.
	// Default DefaultRetryBackoffMin (1s); zero means the default. At most
	// RetryBackoffMax.
	RetryBackoffMin time.Duration `env:"RETRY_BACKOFF_MIN_SECONDS"`

	// RetryBackoffMax caps the wait between failed attempts of a row.
	// Default DefaultRetryBackoffMax (60s); zero means the default.
	RetryBackoffMax time.Duration `env:"RETRY_BACKOFF_MAX_SECONDS"`

	// PublishedRetention is how long a published row is kept, for
	// debugging, before it is purged in small batches (so the purge never
	// locks the table for long). Default and zero: a row is deleted as soon
	// as it is published. Must not be negative.
	PublishedRetention time.Duration `env:"PUBLISHED_RETENTION_SECONDS"`

	// MaxInFlight is how many messages, per relay subscriber, may be handed
	// to the publisher and not yet acked. It bounds memory and how much is
	// redelivered after a crash. Default DefaultMaxInFlight (1000); zero
	// means the default. Minimum 1.
	MaxInFlight int `env:"MAX_IN_FLIGHT"`

	// MaxInFlightBytes bounds, per relay subscriber, the payload and
	// metadata bytes of the rows it holds (claimed and not yet settled),
	// beside MaxInFlight's count: the window takes a claimed row only while
	// it holds fewer bytes than this (and always at least one row, however
	// large), gives the others straight back, and sizes its claims by the
	// rows it has seen. Default DefaultMaxInFlightBytes (64 MiB); zero
	// means the default. Minimum 1.
	MaxInFlightBytes int `env:"MAX_IN_FLIGHT_BYTES"`

	// DisableOrdering lets the relay publish messages sharing a partition
	// key concurrently and out of write order, for throughput. Default and
	// zero (false): messages with the same partition key are published in
	// the order they were written.
	DisableOrdering bool `env:"DISABLE_ORDERING"`

	// StrictOrder makes a dead row hold its key: the later rows of its
	// topic and partition key stay pending, untouched, until an operator
	// requeues or skips the dead row (SQLStore.RequeueKey, SkipKey). For
	// consumers to whom event N+1 without event N is worse than a delay.
	// Default and zero (false): a dead row is set aside and its key moves
	// on. Needs ordering (not DisableOrdering).
	StrictOrder bool `env:"STRICT_ORDER"`

	// MaxPayloadBytes is the largest payload accepted, in bytes; publishing
	// a larger one is rejected before anything is written. Default and
	// zero: no limit. Must not be negative.
	MaxPayloadBytes int `env:"MAX_PAYLOAD_BYTES"`

	// MaxMetadataBytes is the largest metadata accepted, in bytes, counted
	// as every key's and value's bytes plus 8 per entry (the brokers'
	// per-header framing), the W3C trace context the publisher adds
	// included; publishing more is rejected (ErrMetadataTooLarge) before
	// anything is written. A broker sends metadata as headers, which must
	// fit one frame (RabbitMQ) or the record (Kafka). Default
	// DefaultMaxMetadataBytes (64 KiB); zero means the default. Minimum 1.
	MaxMetadataBytes int `env:"MAX_METADATA_BYTES"`

	// DisableNotify turns the wake-up on commit off: publishers send no
	// NOTIFY and the relay does not LISTEN, so it finds new rows only by
	// polling (PollingInterval). Default and zero (false): on PostgreSQL
	// the relay is woken within milliseconds of a commit; elsewhere it
	// polls either way.
	DisableNotify bool `env:"DISABLE_NOTIFY"`

	// NotifyInterval coalesces commit notifications: a publisher sends at
	// most one NOTIFY per half interval (so committing writers are not
	// serialised on PostgreSQL's notification lock), and the relay, once
	// woken, looks again one interval later for the rows of transactions
	// that skipped theirs, which so have half an interval to commit.
	// Default DefaultNotifyInterval (5ms); zero means the default. Between
	// 100µs and MaxNotifyInterval (1s).
	NotifyInterval time.Duration `env:"NOTIFY_INTERVAL_SECONDS"`

	// UnavailableBackoffMax caps the relay's pause while the destination
	// is unavailable (a broker outage): paused, the relay probes the broker
	// with one publish per pause, the pauses doubling from 100ms up to this
	// cap, so it resumes at most this long after the broker answers again.
	// No attempt is charged to any row meanwhile. Default
	// DefaultUnavailableBackoffMax (1s); zero means the default. At least
	// 10ms.
	UnavailableBackoffMax time.Duration `env:"UNAVAILABLE_BACKOFF_MAX_SECONDS"`

	// RelayTimeout is how long a relay may go without a heartbeat before
	// the other relays take over the rows it holds, whatever their lease
	// (ClaimTimeout) says: a killed relay's keys wait about this long, not
	// the lease. Each relay beats every RelayTimeout/3 in the table's
	// registry (<Table>_relays). A relay paused or cut off from the
	// database for longer is declared dead: the rows it was publishing may
	// go out twice, never lost or out of order (its writes are fenced).
	// Default DefaultRelayTimeout (3s); zero means the default. At least
	// 100ms.
	RelayTimeout time.Duration `env:"RELAY_TIMEOUT_SECONDS"`

	// ListenURL is a PostgreSQL URL (postgres://user:pass@host:5432/db)
	// the relay LISTENs for commit notifications on, with a connection of
	// its own, while its claims and writes go through the store's pool.
	// Set it to the database's direct address when the pool goes through
	// a transaction pooler (PgBouncer's pool_mode = transaction, or a
	// managed pooler that works the same way): a pooler hands the server
	// connection to another client after each transaction, so a LISTEN
	// made through it never receives anything and the relay falls back to
	// PollingInterval. Default and empty: LISTEN on a connection of the
	// store's pool. PostgreSQL only.
	ListenURL string `env:"LISTEN_DATABASE_URL"`
}

// Default returns a Config with every default filled in.
func Default() Config {
	var c Config
	c.SetDefaults()
	return c
}

// SetDefaults replaces each zero field whose zero means "use the default"
// with that default. Fields whose zero has a meaning of its own
// (PublishedRetention, DisableOrdering, StrictOrder, MaxPayloadBytes, DisableNotify) are left alone, as
// are negative values, which Validate rejects.
func (c *Config) SetDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.PollingInterval == 0 {
		c.PollingInterval = DefaultPollingInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxRetryCount == 0 {
		c.MaxRetryCount = DefaultMaxRetryCount
	}
	if c.ClaimTimeout == 0 {
		c.ClaimTimeout = DefaultClaimTimeout
	}
	if c.RetryBackoffMin == 0 {
		c.RetryBackoffMin = DefaultRetryBackoffMin
	}
	if c.RetryBackoffMax == 0 {
		c.RetryBackoffMax = DefaultRetryBackoffMax
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxInFlightBytes == 0 {
		c.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if c.MaxMetadataBytes == 0 {
		c.MaxMetadataBytes = DefaultMaxMetadataBytes
	}
	if c.NotifyInterval == 0 {
		c.NotifyInterval = DefaultNotifyInterval
	}
	if c.UnavailableBackoffMax == 0 {
		c.UnavailableBackoffMax = DefaultUnavailableBackoffMax
	}
	if c.RelayTimeout == 0 {
		c.RelayTimeout = DefaultRelayTimeout
	}
}

// Validate reports every invalid field at once, joined with errors.Join;
// each error names the field and its value. Call SetDefaults first: Validate
// does not treat a zero as the default, so a zero field that has one is
// reported.
func (c Config) Validate() error {
	fes := c.validate()
	errs := make([]error, len(fes))
	for i, fe := range fes {
		errs[i] = fe
	}
	return errors.Join(errs...)
}

func (c Config) validate() []*fieldError {
	var errs []*fieldError
	add := func(field, rule string, got any) {
		errs = append(errs, &fieldError{field: field, rule: rule, got: got})
	}

	if !sqlident.ValidTable(c.Table) {
		add("Table", "must be a SQL identifier, optionally schema-qualified (letters, digits and _, not starting with a digit, at most 48 characters per part)",
			strconv.Quote(c.Table))
	}
	if c.PollingInterval < minPollingInterval {
		add("PollingInterval", "must be at least "+minPollingInterval.String(), c.PollingInterval)
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		add("BatchSize", fmt.Sprintf("must be between 1 and %d", MaxBatchSize), c.BatchSize)
	}
	if c.MaxRetryCount < 1 {
		add("MaxRetryCount", "must be at least 1", c.MaxRetryCount)
	}
	if c.ClaimTimeout < minClaimTimeout {
		add("ClaimTimeout", "must be at least "+minClaimTimeout.String(), c.ClaimTimeout)
	}
	// Zero backoffs are rejected too: SetDefaults replaces them, so a zero
	// here was set on purpose (e.g. from the environment) and is a mistake.
	if c.RetryBackoffMin <= 0 {
		add("RetryBackoffMin", "must be positive", c.RetryBackoffMin)
	}
	if c.RetryBackoffMax <= 0 {
		add("RetryBackoffMax", "must be positive", c.RetryBackoffMax)
	}
	if c.RetryBackoffMin > 0 && c.RetryBackoffMax > 0 && c.RetryBackoffMin > c.RetryBackoffMax {
		errs = append(errs, &fieldError{
			field: "RetryBackoffMin",
			rule:  "must not exceed %s (" + c.RetryBackoffMax.String() + ")",
			other: "RetryBackoffMax",
			got:   c.RetryBackoffMin,
		})
	}
	if c.PublishedRetention < 0 {
		add("PublishedRetention", "must not be negative", c.PublishedRetention)
	}
	if c.MaxInFlight < 1 {
		add("MaxInFlight", "must be at least 1", c.MaxInFlight)
	}
	if c.MaxInFlightBytes < 1 {
		add("MaxInFlightBytes", "must be at least 1", c.MaxInFlightBytes)
	}
	if c.StrictOrder && c.DisableOrdering {
		errs = append(errs, &fieldError{field: "StrictOrder", rule: "needs ordering: unset %s", other: "DisableOrdering", got: c.StrictOrder})
	}
	if c.RelayTimeout < minRelayTimeout {
		add("RelayTimeout", "must be at least "+minRelayTimeout.String(), c.RelayTimeout)
	}
	if c.MaxPayloadBytes < 0 {
		add("MaxPayloadBytes", "must not be negative", c.MaxPayloadBytes)
	}
	if c.MaxMetadataBytes < 1 {
		add("MaxMetadataBytes", "must be at least 1", c.MaxMetadataBytes)
	}
	if c.NotifyInterval < minNotifyInterval || c.NotifyInterval > MaxNotifyInterval {
		add("NotifyInterval", "must be between "+minNotifyInterval.String()+" and "+MaxNotifyInterval.String(), c.NotifyInterval)
	}
	if c.UnavailableBackoffMax < minUnavailableBackoffMax {
		add("UnavailableBackoffMax", "must be at least "+minUnavailableBackoffMax.String(), c.UnavailableBackoffMax)
	}
	if c.ListenURL != "" && !postgresURL(c.ListenURL) {
		add("ListenURL", "must be a postgres:// or postgresql:// URL with a host", strconv.Quote(redactURL(c.ListenURL)))
	}
	return errs
}

// postgresURL reports whether s is a PostgreSQL URL with a host.
func postgresURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") && u.Host != ""
}

// redactURL hides the password of a URL (user:password@ or ?password=),
// for errors; a value that is not a URL at all is not shown.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(not a URL)"
	}
	changed := false
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery, changed = q.Encode(), true
	}
	if _, ok := u.User.Password(); ok {
		return u.Redacted()
	}
	if changed {
		return u.String()
	}
	return s
}

// secretFields hold URLs whose password errors must not show.
var secretFields = map[string]bool{"ListenURL": true}

// fieldError is one invalid field. It keeps the Go field names apart from
// the message so FromEnv can report the same problem by variable name.
type fieldError struct {
	field string // Go field name
	rule  string // what the value must be; holds one %s for other, if set
	other string // Go field the rule refers to, if any
	got   any    // the invalid value, formatted with %v
}

func (e *fieldError) Error() string {
	return e.format(func(field string) string { return field })
}

// format renders the error with field names mapped through name.
func (e *fieldError) format(name func(field string) string) string {
	return fmt.Sprintf("%s: %s, got %v", name(e.field), e.ruleText(name), e.got)
}

func (e *fieldError) ruleText(name func(field string) string) string {
	if e.other == "" {
		return e.rule
	}
	return fmt.Sprintf(e.rule, name(e.other))
}
