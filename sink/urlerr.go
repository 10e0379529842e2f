package sink

import (
	"errors"
	"net/url"
	"regexp"
)

// quotedPart matches a quoted piece of a parser's message: net/url quotes
// the URL, or the part it choked on, which can hold the password or, when
// a reserved character in it was not percent-encoded, a piece of it.
var quotedPart = regexp.MustCompile(`"[^"]*"`)

// urlProblem says what is wrong with a broker URL without quoting any of
// it: the error may be logged, and the URL holds the password.
func urlProblem(err error) error {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = ue.Err.Error()
	}
	return errors.New(quotedPart.ReplaceAllString(msg, `"…"`) +
		" (percent-encode reserved characters such as # / ? @ : in the user and password)")
}
