package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // driver "sqlite"

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const connectTimeout = dburl.ConnectTimeout

// database is the SQL database the demo writes to.
type database struct {
	db      *sql.DB
	dialect watermilloutbox.Dialect
	desc    string
	shared  bool // a real server: use run-unique tables and drop them
	close   func()
}

func (d *database) placeholder(n int) string {
	if d.dialect == watermilloutbox.PostgreSQL {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// dropTables removes the run's tables; the outbox table only if the run
// named it (never one given in OUTBOX_TABLE).
func (d *database) dropTables(ordersTable, outboxTable string, dropOutbox bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tables := []string{ordersTable}
	if dropOutbox {
		tables = append(tables, outboxTable)
	}
	for _, t := range tables {
		if _, err := d.db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
			fmt.Fprintf(os.Stderr, "quickstart: drop table %s: %s\n", t, oneLine(err.Error()))
		}
	}
}

// openDatabase opens OUTBOX_DATABASE_URL (parsed as the watermill-outbox
// command parses it), or SQLite in a fresh temporary directory when it is
// unset, and checks that the database answers.
func openDatabase(ctx context.Context) (*database, error) {
	raw := os.Getenv("OUTBOX_DATABASE_URL")
	if raw == "" {
		return openSQLite(ctx)
	}
	u, err := dburl.Parse(raw)
	if err != nil {
		return nil, settingErrorf("OUTBOX_DATABASE_URL: %s", err)
	}
	db, err := u.Open(ctx, false)
	if err != nil {
		return nil, settingErrorf("OUTBOX_DATABASE_URL: %s", err)
	}
	return &database{db: db, dialect: u.Dialect, desc: u.String(), shared: true, close: func() { _ = db.Close() }}, nil
}

func openSQLite(ctx context.Context) (*database, error) {
	dir, err := os.MkdirTemp("", "quickstart-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "quickstart.db")
	db, err := sql.Open("sqlite", "file:"+path+"?"+watermilloutbox.SQLiteConnParams)
	if err == nil {
		err = db.PingContext(ctx)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("open SQLite at %s: %w", path, err)
	}
	return &database{
		db:      db,
		dialect: watermilloutbox.SQLite,
		desc:    "SQLite " + path,
		close: func() {
			_ = db.Close()
			_ = os.RemoveAll(dir)
		},
	}, nil
}

// cause reduces a connection error to its reason, without the URL (which
// may hold a password) and without the drivers' nesting.
func cause(err error) string { return dburl.Cause(err) }
