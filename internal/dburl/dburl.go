package dburl

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"regexp"
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
const Forms = "postgres://user:pass@host:5432/db, PostgreSQL keywords like host=h user=u password=p dbname=db, " +
	"a MySQL DSN like root@tcp(127.0.0.1:3306)/test, " +
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
	case isKeyValue(raw):
		// PostgreSQL's keyword/value form, which pgx reads as well.
		pc, err := pgx.ParseConfig(raw)
		if err != nil {
			return fail("invalid PostgreSQL connection string: %s", Cause(err))
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
			// Not even redacted: a form this function does not know is one
			// whose password it cannot find.
			scheme, _, found := strings.Cut(raw, "://")
			if !found || !plainScheme.MatchString(scheme) {
				return fail("unsupported database URL: want %s", Forms)
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

// OpenRelay opens the database as OpenLazy does, for a relay's own
// connections: on MariaDB each starts by setting idle_transaction_timeout
// to relayTimeout in whole seconds, rounded up (RelaySessionTimeout). A
// relay paused inside its claim transaction (SIGSTOP, a long GC pause, a
// frozen VM; MariaDB's claim takes three round trips) would otherwise keep
// that transaction's row locks, and the keys of those rows would wait,
// until it resumes; the server now ends the transaction, and the
// connection, about when the other relays declare it dead and take its
// rows over. A healthy relay is never idle inside a transaction for that
// long. MySQL has no such setting: there it sets nothing.
func (d Database) OpenRelay(relayTimeout time.Duration) (*sql.DB, error) {
	if d.Dialect != outbox.MySQL {
		return d.OpenLazy()
	}
	mc, err := mysql.ParseDSN(d.dsn)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	c, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, errors.New(d.Scrub(fmt.Sprintf("open %s: %s", d, Cause(err))))
	}
	return sql.OpenDB(sessionConnector{Connector: c, init: relaySession(relayTimeout)}), nil
}

// RelaySessionTimeout is the idle_transaction_timeout, in seconds, of a
// relay's own MariaDB connections for relayTimeout (see OpenRelay).
func RelaySessionTimeout(relayTimeout time.Duration) int {
	return max(1, int((relayTimeout+time.Second-1)/time.Second))
}

// relaySession is the statement a relay's MySQL connection starts with. The
// setting is in MariaDB's executable comment (MariaDB 10.3 and later run
// it; MySQL skips it), so MySQL sets only the user variable, which names
// the relay timeout the session was opened for.
func relaySession(relayTimeout time.Duration) string {
	n := strconv.Itoa(RelaySessionTimeout(relayTimeout))
	return "SET @outbox_relay_timeout = " + n + " /*M!100300 , SESSION idle_transaction_timeout = " + n + " */"
}

// sessionConnector runs init on each new connection.
type sessionConnector struct {
	driver.Connector
	init string
}

func (c sessionConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	ex, ok := conn.(driver.ExecerContext)
	if !ok {
		_ = conn.Close()
		return nil, errors.New("the driver's connection cannot execute statements")
	}
	if _, err := ex.ExecContext(ctx, c.init, nil); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("set up the relay's session: %w", err)
	}
	return conn, nil
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
	// The pieces a URL parser cuts an unescaped password into, which its
	// error may quote ("invalid port \":abc\"" for abc#SECRET).
	for _, p := range strings.FieldsFunc(password, func(r rune) bool { return strings.ContainsRune("#?/@:", r) }) {
		if len(p) >= 3 {
			s = strings.ReplaceAll(s, p, "***")
		}
	}
	return s
}

// Redact returns raw, a database or broker URL or a MySQL DSN, with its
// password replaced by ***: postgres://user:***@host/db,
// user:***@tcp(host:3306)/db, amqp://guest:***@host:5672/. A password
// given as a query parameter (password=, sslpassword=) is replaced too.
func Redact(raw string) string {
	if isKeyValue(raw) {
		return redactKeyValue(raw)
	}
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
	if isKeyValue(raw) {
		for _, kv := range keyValues(raw) {
			if passwordKey(kv.key) {
				return kv.value
			}
		}
		return ""
	}
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
		// The user ends at the first ':' (a user name holds no ':', '/',
		// '?', '#' or '@' unescaped); the password runs to the last '@'
		// after it, since an unescaped one may hold '/', '?', '#' or '@'.
		// A query holding an '@' too is redacted up to it: too much, never
		// too little.
		start = i + 3
		colon := strings.IndexAny(raw[start:], ":/?#@")
		if colon < 0 || raw[start+colon] != ':' {
			return 0, 0, false
		}
		at := strings.LastIndexByte(raw[start+colon:], '@')
		if at < 0 {
			return 0, 0, false
		}
		return start + colon + 1, start + colon + at, true
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
		return unquoted(urlErr.Err.Error())
	case errors.As(err, &pce):
		// "cannot parse `<url, best-effort redacted>`: <reason>": keep the reason.
		msg := pce.Error()
		if _, reason, ok := strings.Cut(msg, "`: "); ok {
			return unquoted(reason)
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

// quotedPart matches a quoted piece of a parser's message: net/url quotes
// the URL or the part it choked on, which can be the password, or the
// piece of it before a reserved character that was not percent-encoded.
var quotedPart = regexp.MustCompile(`"[^"]*"`)

// unquoted is a parser's message without the pieces of the input it
// quotes, and a hint at the usual cause.
func unquoted(msg string) string {
	out := quotedPart.ReplaceAllString(oneLine(msg), `"…"`)
	if out != oneLine(msg) {
		out += " (percent-encode reserved characters such as # / ? @ : in the user and password)"
	}
	return out
}

// plainScheme is a URL scheme Parse may name in its error.
var plainScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,20}$`)

// keyValueStart recognises PostgreSQL's keyword/value connection string
// ("host=h user=u password=p dbname=db") by its first keyword.
var keyValueStart = regexp.MustCompile(`^\s*[A-Za-z_]+\s*=`)

// isKeyValue reports whether raw is in PostgreSQL's keyword/value form.
func isKeyValue(raw string) bool {
	return !strings.Contains(raw, "://") && keyValueStart.MatchString(raw)
}

// keyValue is one keyword and its value, with where the value is in the
// string (quotes included).
type keyValue struct {
	key, value string
	start, end int
}

// keyValues splits a keyword/value string as libpq does: key = value, the
// value bare up to a space, or in single quotes with \' and \\ escapes.
// It is lenient: it only has to find the values to hide.
func keyValues(raw string) []keyValue {
	var out []keyValue
	i := 0
	for i < len(raw) {
		for i < len(raw) && isSpace(raw[i]) {
			i++
		}
		eq := strings.IndexByte(raw[i:], '=')
		if eq < 0 {
			break
		}
		key := strings.TrimSpace(raw[i : i+eq])
		i += eq + 1
		for i < len(raw) && isSpace(raw[i]) {
			i++
		}
		kv := keyValue{key: key, start: i}
		var v strings.Builder
		if i < len(raw) && raw[i] == '\'' {
			for i++; i < len(raw) && raw[i] != '\''; i++ {
				if raw[i] == '\\' && i+1 < len(raw) {
					i++
				}
				v.WriteByte(raw[i])
			}
			i++ // the closing quote
		} else {
			for ; i < len(raw) && !isSpace(raw[i]); i++ {
				if raw[i] == '\\' && i+1 < len(raw) {
					i++
				}
				v.WriteByte(raw[i])
			}
		}
		kv.end, kv.value = min(i, len(raw)), v.String()
		out = append(out, kv)
	}
	return out
}

func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v'
}

// passwordKey reports the keywords whose value is a password.
func passwordKey(key string) bool {
	switch strings.ToLower(key) {
	case "password", "sslpassword":
		return true
	}
	return false
}

// redactKeyValue replaces the passwords of a keyword/value string by ***.
func redactKeyValue(raw string) string {
	out, last := "", 0
	for _, kv := range keyValues(raw) {
		if passwordKey(kv.key) {
			out += raw[last:kv.start] + "***"
			last = kv.end
		}
	}
	return out + raw[last:]
}

// ParseDialect maps the name of a --dialect flag ("postgres", "postgresql",
// "pgx", "mysql", "mariadb", "sqlite", "sqlite3"; any case) to a Dialect.
func ParseDialect(name string) (outbox.Dialect, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "postgres", "postgresql", "pgx":
		return outbox.PostgreSQL, nil
	case "mysql", "mariadb":
		return outbox.MySQL, nil
	case "sqlite", "sqlite3":
		return outbox.SQLite, nil
	}
	return "", fmt.Errorf("%w: %q (want postgres, mysql or sqlite)", outbox.ErrUnknownDialect, name)
}
