package watermilloutbox

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// TopicFilter selects destination topics: by exact name (Names) and by
// prefix (Prefixes). A topic matches when it is one of the names or starts
// with one of the prefixes. The zero value matches every topic.
//
// Ordering is per topic and key, so a filter never splits a key's rows
// between relays: relays with disjoint filters share one table safely.
type TopicFilter struct {
	Names    []string
	Prefixes []string
}

// ParseTopicFilter builds a filter from patterns: "orders.placed" matches
// that topic, "orders.*" every topic starting with "orders.", and "*"
// every topic (as does an empty list). A pattern that is empty, or has a
// "*" anywhere but at its end, is an error.
func ParseTopicFilter(patterns []string) (TopicFilter, error) {
	var f TopicFilter
	for _, p := range patterns {
		switch {
		case p == "*":
			return TopicFilter{}, nil
		case strings.TrimSpace(p) != p || p == "":
			return TopicFilter{}, fmt.Errorf("topic pattern %q: empty or padded with spaces", p)
		case strings.HasSuffix(p, "*"):
			prefix := strings.TrimSuffix(p, "*")
			if strings.Contains(prefix, "*") {
				return TopicFilter{}, fmt.Errorf("topic pattern %q: '*' only at the end", p)
			}
			f.Prefixes = append(f.Prefixes, prefix)
		case strings.Contains(p, "*"):
			return TopicFilter{}, fmt.Errorf("topic pattern %q: '*' only at the end", p)
		default:
			if err := ValidateTopic(p); err != nil {
				return TopicFilter{}, fmt.Errorf("topic pattern %q: %w", p, err)
			}
			f.Names = append(f.Names, p)
		}
	}
	return f, nil
}

// All reports whether f matches every topic.
func (f TopicFilter) All() bool { return len(f.Names) == 0 && len(f.Prefixes) == 0 }

// Match reports whether topic passes f.
func (f TopicFilter) Match(topic string) bool {
	if f.All() || slices.Contains(f.Names, topic) {
		return true
	}
	for _, p := range f.Prefixes {
		if strings.HasPrefix(topic, p) {
			return true
		}
	}
	return false
}

// String renders f as the patterns ParseTopicFilter reads.
func (f TopicFilter) String() string {
	if f.All() {
		return "*"
	}
	parts := slices.Clone(f.Names)
	for _, p := range f.Prefixes {
		parts = append(parts, p+"*")
	}
	return strings.Join(parts, ",")
}

// sql returns the filter as a condition on column col, binding its values
// from placeholder n on, or "" for the zero filter. Prefixes compare the
// first characters, which needs no escaping (LIKE would treat % and _).
func (f TopicFilter) sql(d sqlDialect, col string, n int) (string, []any) {
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
