package dburl_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/dburl"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func TestParseForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw     string
		dialect outbox.Dialect
		where   string
	}{
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable", outbox.PostgreSQL, "127.0.0.1:5432"},
		{"postgresql://u:secret@db.example:6543/app", outbox.PostgreSQL, "db.example:6543"},
		{"root@tcp(127.0.0.1:3306)/test", outbox.MySQL, "127.0.0.1:3306"},
		{"u:p@ss:w/rd@tcp(10.0.0.1:3307)/app?parseTime=true", outbox.MySQL, "10.0.0.1:3307"},
		{"mysql://u:secret@db.example/app", outbox.MySQL, "db.example:3306"},
		{"sqlite:///var/lib/app.db", outbox.SQLite, "/var/lib/app.db"},
		{"sqlite:app.db", outbox.SQLite, "app.db"},
		{"file:/tmp/x.sqlite?_pragma=foreign_keys(1)", outbox.SQLite, "/tmp/x.sqlite"},
		{"./outbox.sqlite3", outbox.SQLite, "./outbox.sqlite3"},
	} {
		d, err := dburl.Parse(tc.raw)
		require.NoError(t, err, tc.raw)
		require.Equal(t, tc.dialect, d.Dialect, tc.raw)
		require.Equal(t, tc.where, d.Where, tc.raw)
	}
}

// TestPasswordsNeverShow: the URL's password is in no error of Parse or
// Open, and Redact replaces it, in each form.
func TestPasswordsNeverShow(t *testing.T) {
	t.Parallel()
	const pw = "s3cr3t-pw"
	for _, tc := range []struct{ raw, redacted string }{
		{"postgres://app:" + pw + "@127.0.0.1:1/test", "postgres://app:***@127.0.0.1:1/test"},
		{"postgres://app:" + pw + "@127.0.0.1:notaport/test", "postgres://app:***@127.0.0.1:notaport/test"},
		{"postgres://app@127.0.0.1:1/test?password=" + pw, "postgres://app@127.0.0.1:1/test?password=***"},
		{"app:" + pw + "@tcp(127.0.0.1:1)/test", "app:***@tcp(127.0.0.1:1)/test"},
		{"app:" + pw + "@tcp(127.0.0.1:1/test", "app:***@tcp(127.0.0.1:1/test"},
		{"app:" + pw + "@tcp(127.0.0.1:1)/test?timeout=banana", "app:***@tcp(127.0.0.1:1)/test?timeout=banana"},
		{"mysql://app:" + pw + "@127.0.0.1:1/test", "mysql://app:***@127.0.0.1:1/test"},
		{"amqp://guest:" + pw + "@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"},
		{"ftp://app:" + pw + "@host/x", "ftp://app:***@host/x"},
	} {
		require.Equal(t, tc.redacted, dburl.Redact(tc.raw))
		d, err := dburl.Parse(tc.raw)
		if err != nil {
			require.NotContains(t, err.Error(), pw, tc.raw)
			continue
		}
		require.NotContains(t, d.Redacted, pw)
		db, err := d.Open(context.Background(), false)
		if err == nil {
			_ = db.Close()
			continue
		}
		require.NotContains(t, err.Error(), pw, tc.raw)
		require.Contains(t, err.Error(), "127.0.0.1:1", "the error names where it tried")
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"":                               "empty",
		"localhost/test":                 "unsupported database",
		"redis://h:6379":                 "unsupported database (redis://)",
		"sqlite:":                        "no file",
		"postgres://h:99999999/db":       "invalid PostgreSQL URL",
		"root@tcp(127.0.0.1/test":        "invalid MySQL DSN",
		"root@tcp(h:1)/t?timeout=banana": "invalid MySQL DSN",
	} {
		_, err := dburl.Parse(raw)
		require.ErrorContains(t, err, want, "%q", raw)
	}
}

func TestOpenSQLite(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "x.db")
	d, err := dburl.Parse(path)
	require.NoError(t, err)
	_, err = d.Open(context.Background(), false)
	require.ErrorContains(t, err, "SQLite file "+path)
	db, err := d.Open(context.Background(), true)
	require.NoError(t, err)
	require.NoError(t, db.Close())
	db, err = d.Open(context.Background(), false)
	require.NoError(t, err, "the file exists now")
	require.NoError(t, db.Close())
}

// TestKeyValueConnectionStrings: PostgreSQL's keyword/value form is
// accepted (pgx reads it) and its password, bare or quoted, is in neither
// the redacted form nor any error.
func TestKeyValueConnectionStrings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ raw, redacted, where, pw string }{
		{"host=127.0.0.1 user=postgres password=Hunter2Secret dbname=test",
			"host=127.0.0.1 user=postgres password=*** dbname=test", "127.0.0.1:5432", "Hunter2Secret"},
		{"host=db.example port=6543 password='with spaces\\' and quote' dbname=app",
			"host=db.example port=6543 password=*** dbname=app", "db.example:6543", "with spaces' and quote"},
		{"password = Hunter2#Secret host=127.0.0.1", "password = *** host=127.0.0.1", "127.0.0.1:5432", "Hunter2#Secret"},
	} {
		require.Equal(t, tc.redacted, dburl.Redact(tc.raw))
		d, err := dburl.Parse(tc.raw)
		require.NoError(t, err, tc.redacted)
		require.Equal(t, outbox.PostgreSQL, d.Dialect)
		require.Equal(t, tc.where, d.Where)
		require.Equal(t, tc.redacted, d.Redacted)
		require.Equal(t, "text with ***", d.Scrub("text with "+tc.pw))
	}
	// Refused forms never echo the string.
	for _, raw := range []string{
		"host=127.0.0.1 port=notaport password=Hunter2Secret",
		"nonsense password=Hunter2Secret",
		"Hunter2Secret",
		"weird;password=Hunter2Secret",
	} {
		_, err := dburl.Parse(raw)
		require.Error(t, err, raw)
		require.NotContains(t, err.Error(), "Hunter2Secret")
	}
}

// TestUnescapedPasswordCharactersNeverShow: a password with a '#', '?', '/'
// or space that was not percent-encoded shows, whole or in part, in no
// error and no redacted form, whatever the parser made of the URL.
func TestUnescapedPasswordCharactersNeverShow(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"postgres://app:hunter2#SECRETPART@127.0.0.1:5432/test",
		"postgres://app:hunter2?SECRETPART@127.0.0.1/test",
		"postgres://app:hunter2/SECRETPART@127.0.0.1/test",
		"postgres://app:hunter2 SECRETPART@127.0.0.1/test",
		"mysql://app:hunter2#SECRETPART@127.0.0.1:3306/test",
		"mysql://app:hunter2/SECRETPART@127.0.0.1:3306/test",
		"app:hunter2#SECRETPART@tcp(127.0.0.1:3306)/test",
		"amqp://guest:hunter2#SECRETPART@127.0.0.1:5672/",
	} {
		require.NotContains(t, dburl.Redact(raw), "hunter2", raw)
		require.NotContains(t, dburl.Redact(raw), "SECRETPART", raw)
		d, err := dburl.Parse(raw)
		if err != nil {
			require.NotContains(t, err.Error(), "hunter2", raw)
			require.NotContains(t, err.Error(), "SECRETPART", raw)
			continue
		}
		require.NotContains(t, d.Redacted+d.String(), "hunter2", raw)
		require.NotContains(t, d.Redacted+d.String(), "SECRETPART", raw)
	}
}
