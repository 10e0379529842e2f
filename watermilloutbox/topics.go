package watermilloutbox

import (
	"strings"
	"unicode/utf8"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// topicsSQL returns the filter as a condition on column col, binding its values
// from placeholder n on, or "" for the zero filter. Prefixes compare the
// first characters, which needs no escaping (LIKE would treat % and _).
func topicsSQL(f relaystore.TopicFilter, d sqlDialect, col string, n int) (string, []any) {
	if f.All() {
		return "", nil
	}
	var conds []string
	var args []any
	for _, name := range f.Names {
		conds = append(conds, col+" = "+d.placeholder(n+len(args)))
		args = append(args, name)
	}
	for _, p := range f.Prefixes {
		length := utf8.RuneCountInString(p)
		conds = append(conds, d.prefix(col, length, d.placeholder(n+len(args))))
		args = append(args, p)
	}
	return "(" + strings.Join(conds, " OR ") + ")", args
}
