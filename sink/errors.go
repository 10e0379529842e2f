package sink

import "github.com/e0a82c8c/watermill-outbox/retry"

// anyMessage reports whether match accepts the message of err or of any
// error it wraps. Some broker errors are made with errors.New, and only
// their text tells them apart.
func anyMessage(err error, match func(msg string) bool) bool {
	if err == nil {
		return false
	}
	if match(err.Error()) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyMessage(u.Unwrap(), match)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyMessage(e, match) {
				return true
			}
		}
	}
	return false
}

// mark wraps err with kind's mark, unless it carries one already.
func mark(err error, kind retry.Kind) error {
	if _, marked := retry.MarkedKind(err); marked {
		return err
	}
	switch kind {
	case retry.Permanent:
		return retry.PermanentError(err)
	case retry.Unavailable:
		return retry.UnavailableError(err)
	}
	return err
}
