package dburl

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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// ConnectTimeout bounds the first connection Open makes.
const ConnectTimeout = 5 * time.Second

// Forms is what Parse accepts, for error and help texts.
const Forms = "postgres://user:pass@host:5432/db, a MySQL DSN like root@tcp(127.0.0.1:3306)/test, " +
	"mysql://user:pass@host:3306/db, or an SQLite file (sqlite:path, file:path, or a path ending in .db, .sqlite or .sqlite3)"

// Database is a parsed database URL.
type Database struct {
	Dialect outbox.Dialect
	// Kind names the database for messages: PostgreSQL, MySQL or SQLite.
	Kind string
	// Where is host:port, or the SQLite file.
	Where string
	// Redacted is the URL as given, its password replaced by ***.
	Redacted string

	driver   string
	dsn      string
	password string
}

// String is "<Kind> at <Where>": what a message may say of the database.
func (d Database) String() string { return d.Kind + " at " + d.Where }

// Parse reads raw, one of Forms. Its errors never hold the password.
func Parse(raw string) (Database, error) {
	d := Database{Redacted: Redact(raw), password: password(raw)}
	fail := func(format string, args ...any) (Database, error) {
		return Database{}, errors.New(d.Scrub(fmt.Sprintf(format, args...)))
	}
	switch {
	case strings.TrimSpace(raw) == "":
		return fail("empty: want %s", Forms)
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		pc, err := pgx.ParseConfig(raw)
		if err != nil {
			return fail("invalid PostgreSQL URL: %s", Cause(err))
		}
		d.Dialect, d.Kind, d.driver, d.dsn = outbox.PostgreSQL, "PostgreSQL", "pgx", raw
		d.Where = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
		if pc.Password != "" {
			d.password = pc.Password
		}
	case strings.HasPrefix(raw, "mysql://"), isMySQLDSN(raw):
		mc, err := parseMySQL(raw)
		if err != nil {
			return fail("invalid MySQL DSN: %s", Cause(err))
		}
		d.Dialect, d.Kind, d.driver, d.dsn = outbox.MySQL, "MySQL", "mysql", mc.FormatDSN()
		d.Where = mc.Addr
		if mc.Passwd != "" {
			d.password = mc.Passwd
		}
	default:
		path, ok := sqlitePath(raw)
		if !ok {
			scheme, _, found := strings.Cut(raw, "://")
			if !found {
				return fail("unsupported database %q: want %s", d.Redacted, Forms)
			}
			return fail("unsupported database (%s://): want %s", scheme, Forms)
		}
		file, query, _ := strings.Cut(path, "?")
		if file == "" {
			return fail("invalid SQLite URL %q: no file", d.Redacted)
		}
		d.Dialect, d.Kind, d.driver, d.Where = outbox.SQLite, "SQLite", "sqlite", file
		d.dsn = "file:" + file + "?" + outbox.SQLiteConnParams
		if query != "" {
			d.dsn += "&" + query
		}
	}
	return d, nil
}

// Open opens the database and checks, within ConnectTimeout, that it
// answers. An SQLite file must exist unless create is set. The errors name
// the database (String), never the password.
func (d Database) Open(ctx context.Context, create bool) (*sql.DB, error) {
	if d.Dialect == outbox.SQLite && !create {
		if _, err := os.Stat(d.Where); err != nil {
			return nil, fmt.Errorf("SQLite file %s: %s", d.Where, Cause(err))
		}
	}
	db, err := sql.Open(d.driver, d.dsn)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	ctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, errors.New(d.Scrub(fmt.Sprintf("cannot connect to %s: %s", d, Cause(err))))
	}
	return db, nil
}

// OpenLazy opens the database without connecting: for a program that
// retries until the database answers (the relay).
func (d Database) OpenLazy() (*sql.DB, error) {
	db, err := sql.Open(d.driver, d.dsn)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	return db, nil
}

// The MySQL driver's own logger is silenced: it logs connection trouble on
// stderr, which the error returned, and the relay's logging, already say.
// At init, because SetLogger writes a package variable the driver reads
// whenever it parses a DSN: set later, it races those reads. Only the
// project's programs (the CLI, the quickstart) import this package.
func init() { _ = mysql.SetLogger(log.New(io.Discard, "", 0)) }

// OpenPgxPool opens a pgx pool on a PostgreSQL database without
// connecting, for a relay over pgx (it connects on first use).
func (d Database) OpenPgxPool() (*pgxpool.Pool, error) {
	if d.Dialect != outbox.PostgreSQL {
		return nil, fmt.Errorf("the pgx driver is for PostgreSQL, not %s", d.Kind)
	}
	cfg, err := pgxpool.ParseConfig(d.dsn)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	return pool, nil
}

// Scrub replaces the URL's password in s by ***: for text that may quote
// it, such as a driver's error.
func (d Database) Scrub(s string) string { return scrub(s, d.password) }

// Scrubber returns Scrub for the password of raw, any URL or DSN Redact
// reads (a broker's URL too).
func Scrubber(raw string) func(string) string {
	pw := password(raw)
	return func(s string) string { return scrub(s, pw) }
}

func scrub(s, password string) string {
	// A password of one or two characters would turn the whole text into
	// stars; the redaction of the URL itself covers those.
	if len(password) < 3 {
		return s
	}
	for _, p := range []string{password, url.QueryEscape(password), url.PathEscape(password)} {
		s = strings.ReplaceAll(s, p, "***")
	}
	return s
}

// Redact returns raw, a database or broker URL or a MySQL DSN, with its
// password replaced by ***: postgres://user:***@host/db,
// user:***@tcp(host:3306)/db, amqp://guest:***@host:5672/. A password
// given as a query parameter (password=, sslpassword=) is replaced too.
func Redact(raw string) string {
	out := raw
	if start, end, ok := passwordSpan(raw); ok && end > start {
		out = raw[:start] + "***" + raw[end:]
	}
	base, query, ok := strings.Cut(out, "?")
	if !ok {
		return out
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		k, _, _ := strings.Cut(p, "=")
		switch strings.ToLower(k) {
		case "password", "passwd", "pass", "sslpassword":
			params[i] = k + "=***"
		}
	}
	return base + "?" + strings.Join(params, "&")
}

// password is the password in raw, where Redact finds it.
func password(raw string) string {
	if start, end, ok := passwordSpan(raw); ok {
		return raw[start:end]
	}
	return ""
}

// passwordSpan locates the password of a URL (scheme://user:pass@host…) or
// of a go-sql-driver DSN (user:pass@tcp(…)/db), the latter exactly as the
// driver splits it: the last '/', the last '@' before it, the first ':'.
func passwordSpan(raw string) (start, end int, ok bool) {
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + 3
		authority := raw[start:]
		if q := strings.IndexByte(authority, '?'); q >= 0 {
			authority = authority[:q]
		}
		at := strings.LastIndexByte(authority, '@')
		if at < 0 {
			return 0, 0, false
		}
		colon := strings.IndexByte(authority[:at], ':')
		if colon < 0 {
			return 0, 0, false
		}
		return start + colon + 1, start + at, true
	}
	slash := strings.LastIndexByte(raw, '/')
	if slash <= 0 {
		return 0, 0, false
	}
	at := strings.LastIndexByte(raw[:slash], '@')
	if at < 0 {
		return 0, 0, false
	}
	colon := strings.IndexByte(raw[:at], ':')
	if colon < 0 {
		return 0, 0, false
	}
	return colon + 1, at, true
}

// isMySQLDSN recognises go-sql-driver's DSN form,
// [user[:password]@][net[(addr)]]/dbname[?params], by its network part.
func isMySQLDSN(s string) bool {
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
		return nil, err
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

// sqlitePath returns the file (and query) of an SQLite URL: sqlite:///abs,
// sqlite://rel, sqlite:path, file:path, or a bare path with an SQLite
// file's extension.
func sqlitePath(raw string) (string, bool) {
	for _, prefix := range []string{"sqlite://", "sqlite3://", "sqlite:", "sqlite3:", "file:"} {
		if rest, ok := strings.CutPrefix(raw, prefix); ok {
			return rest, true
		}
	}
	if strings.Contains(raw, "://") {
		return "", false
	}
	file, _, _ := strings.Cut(raw, "?")
	for _, ext := range []string{".db", ".sqlite", ".sqlite3"} {
		if strings.HasSuffix(file, ext) {
			return raw, true
		}
	}
	return "", false
}

// Cause reduces a parse or connection error to its reason, without the URL
// (which may hold a password) and without the drivers' nesting.
func Cause(err error) string {
	var (
		pce    *pgconn.ParseConfigError
		urlErr *url.Error
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
	case errors.As(err, &urlErr):
		return oneLine(urlErr.Err.Error())
	case errors.As(err, &pce):
		// "cannot parse `<url, best-effort redacted>`: <reason>": keep the reason.
		msg := pce.Error()
		if _, reason, ok := strings.Cut(msg, "`: "); ok {
			return oneLine(reason)
		}
		return "cannot parse the URL"
	case errors.As(err, &dnsErr):
		return "cannot resolve " + dnsErr.Name
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		return fmt.Sprintf("no answer within %s", ConnectTimeout)
	case errors.Is(err, os.ErrNotExist):
		return "does not exist"
	}
	return oneLine(err.Error())
}

// oneLine keeps multi-line messages (errors.Join) on a single line.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }
