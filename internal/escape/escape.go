// Package escape holds the one rule for showing stored text to an
// operator, on the admin page and in the command's tables.
package escape

import (
	"strconv"
	"strings"
	"unicode"
)

// Control escapes the control characters of s (\n, \x1b: a newline, an
// escape sequence that would rewrite a terminal), so a stored value shows
// as what it holds, one value in one cell.
func Control(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
