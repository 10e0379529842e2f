package main

import (
	"context"
	"fmt"
	"os"

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const migrateUsage = `Usage:
  watermill-outbox migrate [--database-url URL] [--table NAME]

Creates the outbox table and its indexes if they do not exist, and brings a
table an earlier version made up to date. It is idempotent, and safe to run
from several places at once: the statements run under a database lock. It
first checks that the database is the one the URL names. An SQLite file is
created if it does not exist.
`

func (a *app) migrate(ctx context.Context, args []string) error {
	f := newFlags("migrate", migrateUsage)
	var d dbFlags
	d.register(f)
	if err := a.parse(f, args); err != nil {
		return err
	}
	store, dbu, err := a.open(ctx, &d, true)
	if err != nil {
		return err
	}
	defer store.DB().Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "table %s is up to date on %s\n", store.Config().Table, dbu)
	return nil
}

const ddlUsage = `Usage:
  watermill-outbox ddl --dialect postgres|mysql|sqlite [--table NAME]
  watermill-outbox ddl --database-url URL [--table NAME]

Prints the statements that create the outbox table and its indexes, for a
migration tool: the ones migrate runs, idempotent (IF NOT EXISTS). The
dialect is --dialect, or that of the database URL (--database-url or
OUTBOX_DATABASE_URL), which is not connected to.
`

func (a *app) ddl(_ context.Context, args []string) error {
	f := newFlags("ddl", ddlUsage)
	var d dbFlags
	d.register(f)
	dialectName := f.String("dialect", "", "postgres, mysql or sqlite (default: the database URL's)")
	if err := a.parse(f, args); err != nil {
		return err
	}
	cfg, err := d.settings()
	if err != nil {
		return err
	}
	var dialect outbox.Dialect
	if *dialectName != "" {
		if dialect, err = dburl.ParseDialect(*dialectName); err != nil {
			return usagef("--dialect: %s", err)
		}
	}
	if d.url != "" || (dialect == "" && os.Getenv("OUTBOX_DATABASE_URL") != "") {
		dbu, setting, err := a.database(&d)
		if err != nil {
			return err
		}
		if dialect != "" && dialect != dbu.Dialect {
			return usagef("--dialect %s, but %s is a %s database", dialect, setting, dbu.Kind)
		}
		dialect = dbu.Dialect
	}
	if dialect == "" {
		return usagef("ddl: give --dialect (postgres, mysql or sqlite) or a database URL")
	}
	ddl, err := outbox.DDL(dialect, cfg.Table)
	if err != nil {
		return usagef("%s", err)
	}
	fmt.Fprint(a.stdout, ddl)
	return nil
}
