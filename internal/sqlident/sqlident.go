// Package sqlident holds the one rule for the table names the outbox and
// the inbox write into their SQL.
package sqlident

import (
	"regexp"
	"strings"
)

var identPart = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

// ValidTable reports whether name is a plain SQL identifier, optionally
// qualified by a schema of the same form ("app.outbox"). Each part is
// letters, digits and underscores, not starting with a digit, and at most 48
// characters: PostgreSQL truncates identifiers at 63 bytes, and the index
// names built from the table name need the rest (a truncated pair could
// collide and make CREATE INDEX IF NOT EXISTS a silent no-op). Table names are written into
// SQL, so anything else (quotes, spaces, semicolons) is refused rather than
// quoted.
func ValidTable(name string) bool {
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if !identPart.MatchString(p) {
			return false
		}
	}
	return true
}
