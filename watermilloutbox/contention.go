package watermilloutbox

import (
	"errors"
	"fmt"
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

// isContention asks each dialect: the error says which driver it came
// from.
func isContention(err error) bool {
	for _, d := range dialects {
		if d.contention(err) {
			return true
		}
	}
	return false
}
