package doccheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestForwarderFileMap: the file map in forwarder/doc.go names files that
// exist, and every file of the package but doc.go and the tests.
func TestForwarderFileMap(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(root, "forwarder")
	doc, err := os.ReadFile(filepath.Join(dir, "doc.go"))
	require.NoError(t, err)
	named := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b([a-z0-9_]+\.go)\b`).FindAllStringSubmatch(string(doc), -1) {
		named[m[1]] = true
	}
	require.NotEmpty(t, named, "forwarder/doc.go names no file")
	for name := range named {
		_, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err, "forwarder/doc.go names %s", name)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	require.NoError(t, err)
	for _, f := range files {
		name := filepath.Base(f)
		if name == "doc.go" || strings.HasSuffix(name, "_test.go") {
			continue
		}
		require.True(t, named[name], "forwarder/doc.go's file map leaves out %s", name)
	}
}
