package forwarder

import (
	"fmt"
	"strings"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// parseTopicFilter builds a filter from Config.Topics' patterns: "orders.placed" matches
// that topic, "orders.*" every topic starting with "orders.", and "*"
// every topic (as does an empty list). A pattern that is empty, or has a
// "*" anywhere but at its end, is an error.
func parseTopicFilter(patterns []string) (relaystore.TopicFilter, error) {
	var f relaystore.TopicFilter
	for _, p := range patterns {
		switch {
		case p == "*":
			return relaystore.TopicFilter{}, nil
		case strings.TrimSpace(p) != p || p == "":
			return relaystore.TopicFilter{}, fmt.Errorf("topic pattern %q: empty or padded with spaces", p)
		case strings.HasSuffix(p, "*"):
			prefix := strings.TrimSuffix(p, "*")
			if strings.Contains(prefix, "*") {
				return relaystore.TopicFilter{}, fmt.Errorf("topic pattern %q: '*' only at the end", p)
			}
			f.Prefixes = append(f.Prefixes, prefix)
		case strings.Contains(p, "*"):
			return relaystore.TopicFilter{}, fmt.Errorf("topic pattern %q: '*' only at the end", p)
		default:
			if err := outbox.ValidateTopic(p); err != nil {
				return relaystore.TopicFilter{}, fmt.Errorf("topic pattern %q: %w", p, err)
			}
			f.Names = append(f.Names, p)
		}
	}
	return f, nil
}
