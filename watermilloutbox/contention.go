package watermilloutbox

import (
	"errors"
	"fmt"

	"github.com/go-sql-driver/mysql"
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
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		switch my.Number {
		case 1213, // ER_LOCK_DEADLOCK
			1205: // ER_LOCK_WAIT_TIMEOUT
			return true
		}
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
