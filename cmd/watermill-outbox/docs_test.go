package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocsNameEveryFlag: every flag that a command's --help lists is in
// the command line reference (docs/operating.md).
func TestDocsNameEveryFlag(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/operating.md")
	require.NoError(t, err)
	cmds := []string{"migrate", "ddl", "stats", "dead list", "dead requeue", "dead purge", "keys",
		"keys requeue", "keys skip", "relay", "inbox stats", "inbox purge"}
	for name := range commands {
		require.True(t, slices.ContainsFunc(cmds, func(c string) bool { return c == name || strings.HasPrefix(c, name+" ") }),
			"a command this test does not know: %s", name)
	}
	flagLine := regexp.MustCompile(`(?m)^  --([a-z-]+)`)
	for _, cmd := range cmds {
		require.Contains(t, string(doc), "`"+cmd, "docs/operating.md does not name the command %q", cmd)
		var out, errOut bytes.Buffer
		require.Equal(t, exitOK, run(context.Background(), append(strings.Fields(cmd), "--help"), &out, &errOut), errOut.String())
		_, flags, ok := strings.Cut(out.String(), "\nFlags:\n")
		require.True(t, ok, "%s --help lists no flags", cmd)
		found := flagLine.FindAllStringSubmatch(flags, -1)
		require.NotEmpty(t, found, "%s --help: no flag lines matched", cmd)
		for _, m := range found {
			named := regexp.MustCompile(`--` + regexp.QuoteMeta(m[1]) + `([^a-z-]|$)`).Match(doc)
			require.True(t, named, "docs/operating.md does not name %s --%s", cmd, m[1])
		}
	}
}
