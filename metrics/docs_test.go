package metrics_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/metrics"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestDocsListEveryMetric: the metrics table of docs/operating.md has a row
// for every metric the collector exports, and none for one it does not.
func TestDocsListEveryMetric(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/operating.md")
	require.NoError(t, err)
	documented := map[string]bool{}
	name := regexp.MustCompile("`(outbox_[a-z_]+)`")
	for _, row := range regexp.MustCompile("(?m)^\\| (`outbox_[^|]+)\\|").FindAllSubmatch(doc, -1) {
		for _, m := range name.FindAllSubmatch(row[1], -1) {
			documented[string(m[1])] = true
		}
	}
	require.NotEmpty(t, documented, "no metrics table found in docs/operating.md")

	m, err := metrics.New(&outbox.SQLStore{}, metrics.Config{}, nil) // a stats and blocked-keys source: every metric
	require.NoError(t, err)
	ch := make(chan *prometheus.Desc, 100)
	m.Describe(ch)
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		exported := fqName.FindStringSubmatch(d.String())[1]
		require.True(t, documented[exported], "docs/operating.md's metrics table has no row for %s", exported)
		delete(documented, exported)
	}
	require.Empty(t, documented, "docs/operating.md lists metrics the collector does not export")
}
