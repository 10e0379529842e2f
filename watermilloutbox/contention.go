package watermilloutbox

import (
	"errors"
	"fmt"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// markContention wraps err with relaystore.ErrContention when it is contention.
func markContention(err error) error {
	if err == nil || errors.Is(err, relaystore.ErrContention) || !isContention(err) {
		return err
	}
	return fmt.Errorf("%w: %w", relaystore.ErrContention, err)
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
