// Package dburl turns the one database setting of the outbox's programs
// (OUTBOX_DATABASE_URL, the command's --database-url) into a dialect and an
// open *sql.DB: a postgres:// URL, a MySQL DSN (root@tcp(127.0.0.1:3306)/test)
// or mysql:// URL, or an SQLite file. It also keeps the URL's password out
// of everything printed: Redact for the URL itself, Cause for the errors of
// parsing and connecting, Scrub for any other text.
package dburl
