// Package sqlident holds the rules for the names the outbox and the inbox
// write into their SQL: which table names are accepted, and the names and
// keys derived from them.
package sqlident

import (
	"fmt"
	"hash/fnv"
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

// NotifyChannel is the PostgreSQL channel a Publisher notifies and the
// store's Listen waits on for the outbox table: "outbox:" and the table name as
// configured, or, were that longer than PostgreSQL's 63-byte limit, "outbox:"
// and a hash of it. Table names are validated identifiers, so it needs no
// quoting in a string literal.
func NotifyChannel(table string) string {
	const maxIdent = 63
	if c := "outbox:" + table; len(c) <= maxIdent {
		return c
	}
	return fmt.Sprintf("outbox:%x", Hash("notify "+table))
}

// Hash hashes s to a non-negative int64: an advisory lock key, or the
// channel of a table name too long for one.
func Hash(s string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("watermill-outbox " + s))
	return int64(h.Sum64() >> 1)
}
