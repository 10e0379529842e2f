package watermilloutbox

import (
	"errors"
	"fmt"
)

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
