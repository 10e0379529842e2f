package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad usage or settings, a database that cannot be reached
)

const name = "watermill-outbox"

const mainUsage = `watermill-outbox operates the outbox table of github.com/e0a82c8c/watermill-outbox.

Usage:
  watermill-outbox <command> [flags]

Commands:
  migrate        create the outbox table and its indexes (idempotent)
  ddl            print the table's DDL, for a migration tool
  stats          per topic: pending, waiting, leased and dead rows, oldest ages
  dead list      page through the dead rows
  dead requeue   make dead rows pending again (a dry run unless --yes)
  dead purge     delete dead rows for good (a dry run unless --yes)
  keys           list the blocked keys (a failing or, strict, dead head holds each)
  keys requeue   retry a key's head now; keys skip: delete it (dry runs unless --yes)
  relay          relay the table to Kafka or RabbitMQ until SIGINT or SIGTERM
  inbox stats    per consumer: records in the inbox table, oldest age
  inbox purge    delete inbox records older than the dedup window

The database comes from --database-url or OUTBOX_DATABASE_URL:
  postgres://user:pass@host:5432/db?sslmode=disable
  root@tcp(127.0.0.1:3306)/test       a MySQL/MariaDB DSN (or mysql://user:pass@host:3306/db)
  sqlite:/var/lib/app/outbox.db       SQLite (also file:PATH, or a path ending in .db, .sqlite, .sqlite3)
The table and every relay setting come from the OUTBOX_* variables of
package config (OUTBOX_TABLE, OUTBOX_BATCH_SIZE, ...); --table overrides
OUTBOX_TABLE.

Exit status: 0 done, 1 failed, 2 bad usage or settings (a database that
cannot be reached included, for every command but relay: the relay exits 2
on a bad setting only, and logs and retries a database or broker it cannot
reach, wrong password included, until SIGINT or SIGTERM). An error is one
line naming the flag or the variable; a password in a URL is shown as ***.

Run 'watermill-outbox <command> --help' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is bad usage or a bad setting: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelp: the command printed its help; exit 0.
var errHelp = errors.New("help")

// app is one run of the command.
type app struct {
	stdout, stderr io.Writer
	// scrubbers take the passwords of the URLs given out of every error
	// line, on top of the redaction where the URLs are quoted.
	scrubbers []func(string) string
}

// commands are the subcommands, by name.
var commands = map[string]func(a *app, ctx context.Context, args []string) error{
	"migrate":      (*app).migrate,
	"ddl":          (*app).ddl,
	"stats":        (*app).stats,
	"dead list":    (*app).deadList,
	"dead requeue": (*app).deadRequeue,
	"dead purge":   (*app).deadPurge,
	"keys":         (*app).keys,
	"relay":        (*app).relay,
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	err := a.dispatch(ctx, args)
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	}
	fmt.Fprintln(stderr, name+": "+a.scrub(oneLine(err.Error())))
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

func (a *app) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.stderr, mainUsage)
		return usagef("no command given")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(a.stdout, mainUsage)
		return nil
	}
	key := args[0]
	rest := args[1:]
	if key == "dead" {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			if len(rest) > 0 && isHelp(rest[0]) {
				fmt.Fprint(a.stdout, deadUsage)
				return nil
			}
			return usagef("dead: want a subcommand: list, requeue or purge")
		}
		key, rest = "dead "+rest[0], rest[1:]
	}
	run, ok := commands[key]
	if !ok {
		names := make([]string, 0, len(commands))
		for k := range commands {
			names = append(names, k)
		}
		sort.Strings(names)
		return usagef("unknown command %q: want one of %s", key, strings.Join(names, ", "))
	}
	if !slices.ContainsFunc(rest, isHelp) {
		a.warnUnknownVariables()
	}
	return run(a, ctx, rest)
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

const deadUsage = `Usage:
  watermill-outbox dead list     [--topic T] [--limit N] [--after ID] [--json]
  watermill-outbox dead requeue  (--id ID[,ID...] | --topic T | --all) [--yes]
  watermill-outbox dead purge    (--id ID[,ID...] | --topic T | --all) [--yes]

A row is dead when the relay gave up on it: a broker refused it for good,
or it failed OUTBOX_MAX_RETRY_COUNT times. It stays in the table with its
last error until it is requeued (pending again, with a fresh retry budget)
or purged. Run 'watermill-outbox dead <subcommand> --help' for the flags.
`

// flags is a subcommand's flag set. Errors are returned, not printed, so
// each is one line; --help prints usage (and the flags) to stdout.
type flags struct {
	*flag.FlagSet
	usage string
}

func newFlags(cmd, usage string) *flags {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{FlagSet: fs, usage: usage}
}

// parse parses args, which must hold flags only.
func (a *app) parse(f *flags, args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.help(f)
			return errHelp
		}
		// The flag package names flags -name; the help says --name.
		return usagef("%s: %s", f.Name(), flagName.ReplaceAllString(err.Error(), "$1--"))
	}
	if f.NArg() > 0 {
		return usagef("%s: unexpected argument %q (flags only; see --help)", f.Name(), f.Arg(0))
	}
	return nil
}

var flagName = regexp.MustCompile(`((?:flag|defined:|argument:) )-(?:-)?`)

// help prints the usage and the flags, as --name, with their defaults
// (never an environment variable's value: it could hold a password).
func (a *app) help(f *flags) {
	fmt.Fprint(a.stdout, f.usage)
	fmt.Fprintln(a.stdout, "\nFlags:")
	f.VisitAll(func(fl *flag.Flag) {
		typ, usage := flag.UnquoteUsage(fl)
		line := "  --" + fl.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintln(a.stdout, line)
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" && fl.DefValue != "0s" {
			usage += " (default " + fl.DefValue + ")"
		}
		fmt.Fprintln(a.stdout, "      "+usage)
	})
}

// scrub replaces every password given in s by ***.
func (a *app) scrub(s string) string {
	for _, f := range a.scrubbers {
		s = f(s)
	}
	return s
}

// oneLine keeps multi-error messages (errors.Join) on a single line.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

// dbFlags are the flags of every command that opens the database.
type dbFlags struct {
	url   string
	table string
}

func (d *dbFlags) register(f *flags) {
	f.StringVar(&d.url, "database-url", "", "the database (default $OUTBOX_DATABASE_URL): "+dburl.Forms)
	f.StringVar(&d.table, "table", "", "the outbox table (default $OUTBOX_TABLE, else "+config.DefaultTable+")")
}

// settings reads the OUTBOX_* settings, with --table over OUTBOX_TABLE.
func (d *dbFlags) settings() (config.Config, error) {
	cfg, err := config.FromEnv()
	if err != nil {
		return config.Config{}, &usageError{msg: strings.TrimPrefix(err.Error(), "config: ")}
	}
	if d.table != "" {
		if !sqlident.ValidTable(d.table) {
			return config.Config{}, usagef("--table: invalid table name %q: want letters, digits and underscores, not starting with a digit, at most 48 characters, optionally schema-qualified", d.table)
		}
		cfg.Table = d.table
	}
	return cfg, nil
}

// database parses the database URL, from the flag or the environment.
// setting names where it came from, for errors.
func (a *app) database(d *dbFlags) (db dburl.Database, setting string, err error) {
	raw, setting := d.url, "--database-url"
	if raw == "" {
		raw, setting = os.Getenv("OUTBOX_DATABASE_URL"), "OUTBOX_DATABASE_URL"
	}
	if raw == "" {
		return dburl.Database{}, "", usagef("no database: set --database-url or OUTBOX_DATABASE_URL (%s)", dburl.Forms)
	}
	a.scrubbers = append(a.scrubbers, dburl.Scrubber(raw))
	db, err = dburl.Parse(raw)
	if err != nil {
		return dburl.Database{}, "", usagef("%s: %s", setting, err)
	}
	a.scrubbers = append(a.scrubbers, db.Scrub)
	return db, setting, nil
}

// open opens the database and the store of the table. create lets an
// SQLite file be created (migrate).
func (a *app) open(ctx context.Context, d *dbFlags, create bool) (*outbox.SQLStore, dburl.Database, error) {
	cfg, err := d.settings()
	if err != nil {
		return nil, dburl.Database{}, err
	}
	dbu, setting, err := a.database(d)
	if err != nil {
		return nil, dburl.Database{}, err
	}
	db, err := dbu.Open(ctx, create)
	if err != nil {
		return nil, dburl.Database{}, usagef("%s: %s", setting, err)
	}
	store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: dbu.Dialect, Outbox: cfg}, nil)
	if err != nil {
		_ = db.Close()
		return nil, dburl.Database{}, usagef("%s", err)
	}
	return store, dbu, nil
}

// storeError adds what to do to the error of a table that is not there.
func storeError(err error) error {
	msg := err.Error()
	for _, missing := range []string{"does not exist", "doesn't exist", "no such table"} {
		if strings.Contains(msg, missing) {
			return fmt.Errorf("%w (run '%s migrate' to create the table)", err, name)
		}
	}
	return err
}
