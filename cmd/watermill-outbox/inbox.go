package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

func init() { commands["inbox"] = (*app).inbox }

const inboxUsage = `Usage:
  watermill-outbox inbox stats  [--json] [--database-url URL] [--inbox-table NAME]
  watermill-outbox inbox purge  [--consumer NAME] [--older-than DURATION] [--batch-size N]

The inbox table (package inbox) records, per consumer, the messages it has
applied, for as long as the dedup window. 'stats' prints each consumer's
records and the age of its oldest; 'purge' deletes the records older than
the window, in batches: a message redelivered after that is applied again.
Run 'watermill-outbox inbox <subcommand> --help' for the flags.
`

const inboxStatsUsage = `Usage:
  watermill-outbox inbox stats [--json] [--database-url URL] [--inbox-table NAME]

Prints, per consumer, how many records the inbox table holds and the age of
the oldest (past the dedup window, a purge is due). It counts the whole
table.
`

const inboxPurgeUsage = `Usage:
  watermill-outbox inbox purge [--consumer NAME] [--older-than DURATION] [--batch-size N]
                               [--database-url URL] [--inbox-table NAME]

Deletes the records older than --older-than (the dedup window) of one
consumer, or of every consumer in the table, in batches of --batch-size rows.
A message redelivered after its record is gone is applied again, so the
window must outlast any redelivery the broker can make.
`

// inboxFlags are the flags of every inbox subcommand.
type inboxFlags struct {
	url   string
	table string
}

func (d *inboxFlags) register(f *flags) {
	f.StringVar(&d.url, "database-url", "", "the database (default $OUTBOX_DATABASE_URL): "+dburl.Forms)
	f.StringVar(&d.table, "inbox-table", inbox.DefaultTable, "the inbox table")
}

func (a *app) inbox(ctx context.Context, args []string) error {
	if len(args) == 0 || isHelp(args[0]) {
		if len(args) > 0 {
			fmt.Fprint(a.stdout, inboxUsage)
			return nil
		}
		return usagef("inbox: want a subcommand: stats or purge")
	}
	switch args[0] {
	case "stats":
		return a.inboxStats(ctx, args[1:])
	case "purge":
		return a.inboxPurge(ctx, args[1:])
	}
	return usagef("inbox: unknown subcommand %q: want stats or purge", args[0])
}

// openInbox opens the database; inboxOf returns the inbox of a consumer
// in the table (any name, for stats) with cfg's other settings.
func (a *app) openInbox(ctx context.Context, d *inboxFlags) (inboxOf func(consumer string, cfg inbox.Config) (*inbox.Inbox, error), closeDB func(), err error) {
	if !sqlident.ValidTable(d.table) {
		return nil, nil, usagef("--inbox-table: invalid table name %q: want letters, digits and underscores, not starting with a digit, at most 48 characters, optionally schema-qualified", d.table)
	}
	dbu, setting, err := a.database(&dbFlags{url: d.url})
	if err != nil {
		return nil, nil, err
	}
	db, err := dbu.Open(ctx, false)
	if err != nil {
		return nil, nil, usagef("%s: %s", setting, err)
	}
	inboxOf = func(consumer string, cfg inbox.Config) (*inbox.Inbox, error) {
		cfg.Consumer, cfg.Table, cfg.Dialect = consumer, d.table, dbu.Dialect
		in, err := inbox.New(db, cfg, nil)
		if err != nil {
			return nil, usagef("%s", err)
		}
		return in, nil
	}
	return inboxOf, func() { _ = db.Close() }, nil
}

// inboxStatsJSON is inbox stats --json.
type inboxStatsJSON struct {
	Table     string              `json:"table"`
	Consumers []consumerStatsJSON `json:"consumers"`
}

type consumerStatsJSON struct {
	Consumer      string  `json:"consumer"`
	Records       int64   `json:"records"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

func (a *app) inboxStats(ctx context.Context, args []string) error {
	f := newFlags("inbox stats", inboxStatsUsage)
	var d inboxFlags
	d.register(f)
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	if err := a.parse(f, args); err != nil {
		return err
	}
	inboxOf, closeDB, err := a.openInbox(ctx, &d)
	if err != nil {
		return err
	}
	defer closeDB()
	in, err := inboxOf("stats", inbox.Config{})
	if err != nil {
		return err
	}
	st, err := in.Stats(ctx)
	if err != nil {
		return inboxError(err)
	}
	if *asJSON {
		out := inboxStatsJSON{Table: d.table, Consumers: []consumerStatsJSON{}}
		for _, c := range st {
			out.Consumers = append(out.Consumers, consumerStatsJSON{Consumer: c.Consumer, Records: c.Records, OldestSeconds: c.Oldest.Seconds()})
		}
		return writeJSON(a.stdout, out)
	}
	fmt.Fprintf(a.stdout, "inbox table %s\n", d.table)
	if len(st) == 0 {
		fmt.Fprintln(a.stdout, "no records")
		return nil
	}
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CONSUMER\tRECORDS\tOLDEST")
	for _, c := range st {
		fmt.Fprintf(w, "%s\t%d\t%s\n", c.Consumer, c.Records, age(c.Oldest))
	}
	return w.Flush()
}

func (a *app) inboxPurge(ctx context.Context, args []string) error {
	f := newFlags("inbox purge", inboxPurgeUsage)
	var d inboxFlags
	d.register(f)
	consumer := f.String("consumer", "", "only this consumer's records (default every consumer's)")
	olderThan := f.Duration("older-than", inbox.DefaultRetention, "the dedup window: delete the records older than this")
	batch := f.Int("batch-size", inbox.DefaultPurgeBatchSize, "rows per DELETE")
	if err := a.parse(f, args); err != nil {
		return err
	}
	if *olderThan <= 0 || *batch < 1 {
		return usagef("inbox purge: --older-than and --batch-size must be positive")
	}
	inboxOf, closeDB, err := a.openInbox(ctx, &d)
	if err != nil {
		return err
	}
	defer closeDB()
	cfg := inbox.Config{Retention: *olderThan, PurgeBatchSize: *batch}
	consumers := []string{*consumer}
	if *consumer == "" {
		in, err := inboxOf("stats", cfg)
		if err != nil {
			return err
		}
		st, err := in.Stats(ctx)
		if err != nil {
			return inboxError(err)
		}
		consumers = consumers[:0]
		for _, c := range st {
			consumers = append(consumers, c.Consumer)
		}
	}
	for _, c := range consumers {
		in, err := inboxOf(c, cfg)
		if err != nil {
			return err
		}
		n, err := in.Purge(ctx)
		if err != nil {
			return inboxError(err)
		}
		fmt.Fprintf(a.stdout, "consumer %s: purged %d records older than %s\n", c, n, *olderThan)
	}
	return nil
}

// inboxError adds what to do to the error of a table that is not there.
func inboxError(err error) error {
	if e := storeError(err); e != err {
		return fmt.Errorf("%w (the inbox table is created by inbox.Migrate)", err)
	}
	return err
}
