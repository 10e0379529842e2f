package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/metrics"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// TestDashboardNamesExportedMetrics: the Grafana dashboard in
// _examples/prometheus is valid JSON, and every metric its queries name is
// one the collector exports (a histogram's _bucket, _sum and _count
// included).
func TestDashboardNamesExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile("../_examples/prometheus/outbox.dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash), "valid JSON")
	require.NotEmpty(t, dash.Panels)

	m, err := metrics.New(&outbox.SQLStore{}, metrics.Config{}, nil) // a stats and blocked-keys source: every metric
	require.NoError(t, err)
	ch := make(chan *prometheus.Desc, 100)
	m.Describe(ch)
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	exported := map[string]bool{}
	for d := range ch {
		name := fqName.FindStringSubmatch(d.String())[1]
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			exported[name+suffix] = true
		}
	}

	var exprs []string
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has a query", p.Title)
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			exprs = append(exprs, q["query"].(string))
		}
	}
	named := regexp.MustCompile(`\boutbox_[a-z_]+\b`)
	var used []string
	for _, e := range exprs {
		for _, name := range named.FindAllString(e, -1) {
			require.True(t, exported[name], "%s in %q is not a metric the collector exports", name, e)
			used = append(used, name)
		}
	}
	for _, want := range []string{"outbox_backlog", "outbox_oldest_pending_age_seconds", "outbox_blocked_keys",
		"outbox_oldest_blocked_age_seconds", "outbox_relay_published_total", "outbox_relay_lag_seconds_bucket", "outbox_dead"} {
		require.True(t, slices.Contains(used, want), "the dashboard shows %s: %s", want, strings.Join(used, ", "))
	}
}
