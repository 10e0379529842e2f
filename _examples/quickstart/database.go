package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

const connectTimeout = 5 * time.Second

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

// openDatabase opens OUTBOX_DATABASE_URL, or SQLite in a fresh temporary
// directory when it is unset, and checks that the database answers.
func openDatabase(ctx context.Context) (*database, error) {
	raw := os.Getenv("OUTBOX_DATABASE_URL")
	if raw == "" {
		return openSQLite(ctx)
	}
	var (
		d      = &database{shared: true}
		driver string
		dsn    string
		kind   string
		addr   string
	)
	switch {
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		pc, err := pgx.ParseConfig(raw)
		if err != nil {
			return nil, settingErrorf("OUTBOX_DATABASE_URL: invalid PostgreSQL URL: %s", cause(err))
		}
		driver, dsn, kind, d.dialect = "pgx", raw, "PostgreSQL", watermilloutbox.PostgreSQL
		addr = net.JoinHostPort(pc.Host, fmt.Sprint(pc.Port))
	case strings.HasPrefix(raw, "mysql://") || looksLikeMySQLDSN(raw):
		mc, err := parseMySQL(raw)
		if err != nil {
			return nil, settingErrorf("OUTBOX_DATABASE_URL: invalid MySQL DSN: %s", cause(err))
		}
		driver, dsn, kind, d.dialect = "mysql", mc.FormatDSN(), "MySQL", watermilloutbox.MySQL
		addr = mc.Addr
		// The driver logs connection trouble on its own; the error we
		// return says it once.
		_ = mysql.SetLogger(log.New(io.Discard, "", 0))
	default:
		scheme, _, ok := strings.Cut(raw, "://")
		if !ok {
			scheme = "no scheme"
		}
		return nil, settingErrorf("OUTBOX_DATABASE_URL: unsupported database (%s): want postgres://…, mysql://… or a MySQL DSN like root@tcp(127.0.0.1:3306)/test", scheme)
	}

	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, settingErrorf("OUTBOX_DATABASE_URL: %s", cause(err))
	}
	pingCtx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		_ = db.Close()
		return nil, settingErrorf("OUTBOX_DATABASE_URL: cannot connect to %s at %s: %s", kind, addr, cause(err))
	}
	d.db, d.desc, d.close = db, kind+" at "+addr, func() { _ = db.Close() }
	return d, nil
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

// looksLikeMySQLDSN recognises go-sql-driver's DSN form,
// [user[:password]@][net[(addr)]]/dbname[?params], by its network part.
func looksLikeMySQLDSN(s string) bool {
	return !strings.Contains(s, "://") &&
		(strings.Contains(s, "tcp(") || strings.Contains(s, "unix(") || strings.Contains(s, "@/"))
}

// parseMySQL accepts a go-sql-driver DSN or mysql://user:pass@host:port/db?params.
func parseMySQL(raw string) (*mysql.Config, error) {
	if !strings.HasPrefix(raw, "mysql://") {
		return mysql.ParseDSN(raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("not a valid URL")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "3306")
	}
	var userinfo string
	if u.User != nil {
		userinfo = u.User.Username()
		if p, ok := u.User.Password(); ok {
			userinfo += ":" + p
		}
		userinfo += "@"
	}
	dsn := userinfo + "tcp(" + host + ")/" + strings.TrimPrefix(u.Path, "/")
	if u.RawQuery != "" {
		dsn += "?" + u.RawQuery
	}
	return mysql.ParseDSN(dsn)
}

// cause reduces a connection error to its reason, without the URL (which
// may hold a password) and without the drivers' nesting.
func cause(err error) string {
	var (
		errno  syscall.Errno
		dnsErr *net.DNSError
		pgErr  *pgconn.PgError
		myErr  *mysql.MySQLError
	)
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Message
	case errors.As(err, &myErr):
		return myErr.Message
	case errors.As(err, &dnsErr):
		return "cannot resolve " + dnsErr.Name
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		return fmt.Sprintf("no answer within %s", connectTimeout)
	}
	return oneLine(err.Error())
}
