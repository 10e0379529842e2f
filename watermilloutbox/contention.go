package watermilloutbox

import (
	"errors"
	"fmt"
	"reflect"
)

// ErrContention marks a database error that only says a concurrent
// transaction got in the way: a deadlock, a serialization failure, a lock
// wait timeout, SQLite's busy or locked. Retrying is the whole answer, so
// the relay logs such errors below error level and counts them. SQLStore
// wraps them with it (errors.Is(err, ErrContention)); a custom Store may do
// the same with its own.
var ErrContention = errors.New("outbox: database contention")

// markContention wraps err with ErrContention when it is contention.
func markContention(err error) error {
	if err == nil || errors.Is(err, ErrContention) || !isContention(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrContention, err)
}

func isContention(err error) bool {
	// pgconn.PgError (pgx, also through database/sql).
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		switch pg.SQLState() {
		case "40001", // serialization_failure
			"40P01", // deadlock_detected
			"55P03": // lock_not_available
			return true
		}
	}
	switch mysqlErrorNumber(err) {
	case 1213, // ER_LOCK_DEADLOCK
		1205: // ER_LOCK_WAIT_TIMEOUT
		return true
	}
	// modernc.org/sqlite's *sqlite.Error (primary code in the low byte).
	var lite interface{ Code() int }
	if errors.As(err, &lite) {
		switch lite.Code() & 0xff {
		case 5, // SQLITE_BUSY
			6: // SQLITE_LOCKED
			return true
		}
	}
	return false
}

// mysqlErrorNumber is the server's error number of a go-sql-driver/mysql
// *MySQLError in err's chain, or 0. The driver's error type has no method
// to ask through an interface (as pgx's and SQLite's have), and naming the
// type would link the MySQL driver into every program that uses this
// package, PostgreSQL-only ones included: so its Number field is read by
// reflection, from the type the driver names MySQLError.
func mysqlErrorNumber(err error) uint16 {
	for _, e := range errorChain(err) {
		v := reflect.ValueOf(e)
		if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
			continue
		}
		if t := v.Elem().Type(); t.Name() != "MySQLError" || t.PkgPath() != "github.com/go-sql-driver/mysql" {
			continue
		}
		if n := v.Elem().FieldByName("Number"); n.IsValid() && n.Kind() == reflect.Uint16 {
			return uint16(n.Uint())
		}
	}
	return 0
}

// errorChain lists err and every error it wraps, depth first, following
// both Unwrap() error and Unwrap() []error as errors.As does.
func errorChain(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e)
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}
