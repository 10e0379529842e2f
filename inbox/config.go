package inbox

import (
	"errors"
	"fmt"
	"time"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Defaults, and the bounds Validate enforces.
const (
	// DefaultTable is the inbox table used when Config.Table is empty.
	DefaultTable = "watermill_inbox"

	// DefaultRetention is the dedup window: how long a processed message's
	// record is kept. A week outlasts any broker redelivery seen in
	// practice (a consumer group rewound by a day, a RabbitMQ queue
	// drained after a weekend outage) at the cost of a week of rows: about
	// 60 bytes each plus the index, so 100 messages a second keep some
	// 60 million rows, a few gigabytes.
	DefaultRetention = 7 * 24 * time.Hour

	// DefaultPurgeBatchSize is how many rows one purge statement deletes.
	DefaultPurgeBatchSize = 1000

	// MaxPurgeBatchSize bounds PurgeBatchSize: one DELETE holds its row
	// locks until it commits.
	MaxPurgeBatchSize = 100000

	// MaxConsumerLen and MaxUUIDLen bound the stored names, in bytes: the
	// columns' size on MySQL.
	MaxConsumerLen = 255
	MaxUUIDLen     = 255
)

// minRetention keeps a misconfigured window from purging the records of
// messages whose redelivery is still in flight.
const minRetention = time.Minute

// Config configures an Inbox.
type Config struct {
	// Consumer names what processes the messages: one name per handler (or
	// per service, if its handlers never see the same message). A message
	// is applied once per consumer, so two consumers of one topic need two
	// names. Required; at most 255 bytes.
	Consumer string

	// Table is the inbox table, optionally schema-qualified ("app.inbox").
	// Several consumers share one table. It is written into SQL, so it
	// must be a table name config.Config.Table accepts. Default DefaultTable
	// ("watermill_inbox"); empty means the default.
	Table string

	// Dialect of the database. Required by New: the driver behind a
	// *sql.DB is never guessed. NewPgx sets it to PostgreSQL; empty means
	// that there.
	Dialect outbox.Dialect

	// Retention is the dedup window: a record older than it is deleted by
	// Purge, and a message delivered again after that is applied again.
	// Longer costs table size, shorter risks applying a late redelivery
	// twice. Default DefaultRetention (7 days); zero means the default.
	// At least one minute.
	Retention time.Duration

	// PurgeBatchSize is how many rows one DELETE of Purge removes, so a
	// purge never locks much of the table at once. Default
	// DefaultPurgeBatchSize (1000); zero means the default. Between 1 and
	// MaxPurgeBatchSize.
	PurgeBatchSize int

	// Outbox, when set, receives the messages a handler returns, in the
	// handler's transaction, under the publish topic the handler was added
	// with (router.AddHandler's publishTopic): the consumer's effects and
	// the events it emits commit together, and the router publishes
	// nothing itself. Default nil: a handler that returns messages fails
	// with ErrOutputWithoutOutbox, since the router would publish them
	// after the commit, and lose them for good if that failed (the
	// redelivery would be dropped as a duplicate). On SQLite with one
	// connection, run the outbox store's Migrate first: it checks the
	// dialect, which the first Publish would otherwise do on a second
	// connection while the delivery holds the only one.
	Outbox *outbox.Publisher

	// Observer is told the outcome of every delivery (package metrics has
	// one for Prometheus). Default nil: nobody.
	Observer Observer
}

func (c *Config) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.PurgeBatchSize == 0 {
		c.PurgeBatchSize = DefaultPurgeBatchSize
	}
}

// Validate reports every invalid field, naming it. Zero fields other than
// Consumer and Dialect are valid: they take their defaults.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Consumer == "":
		errs = append(errs, errors.New("Consumer: required"))
	case len(c.Consumer) > MaxConsumerLen:
		errs = append(errs, fmt.Errorf("Consumer: %d bytes, at most %d", len(c.Consumer), MaxConsumerLen))
	}
	if c.Table != "" && !sqlident.ValidTable(c.Table) {
		errs = append(errs, fmt.Errorf("Table: %w: %q: want letters, digits and underscores, not starting with a digit, at most 48 characters, optionally schema-qualified",
			outbox.ErrInvalidTableName, c.Table))
	}
	if err := c.Dialect.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("Dialect: %w", err))
	}
	if c.Retention != 0 && c.Retention < minRetention {
		errs = append(errs, fmt.Errorf("Retention: %s, at least %s", c.Retention, minRetention))
	}
	if c.PurgeBatchSize < 0 || c.PurgeBatchSize > MaxPurgeBatchSize {
		errs = append(errs, fmt.Errorf("PurgeBatchSize: %d, want 1 to %d", c.PurgeBatchSize, MaxPurgeBatchSize))
	}
	if len(errs) > 0 {
		return fmt.Errorf("inbox: invalid config: %w", errors.Join(errs...))
	}
	return nil
}
