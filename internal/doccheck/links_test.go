package doccheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"
)

// root is the repository, seen from this package's directory.
const root = "../.."

// readmeMaxLines keeps the README a front page; the reference lives in docs/.
const readmeMaxLines = 400

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile(`^(#{1,6})\s+(.+?)\s*$`)
)

// pages returns README.md and every page under docs/, relative to root.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	require.NotEmpty(t, docs, "no pages under docs/")
	return append([]string{filepath.Join(root, "README.md")}, docs...)
}

// prose returns a page's lines outside fenced code blocks (others blanked,
// so line numbers stay).
func prose(text string) []string {
	lines := strings.Split(text, "\n")
	fenced := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			lines[i] = ""
			continue
		}
		if fenced {
			lines[i] = ""
		}
	}
	return lines
}

// slug is the anchor GitHub gives a heading: lower case, punctuation other
// than '-' and '_' dropped, spaces as '-'.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the anchors of a page's headings, and the headings that
// repeat one (which get a numbered anchor nobody links by name).
func anchors(text string) (map[string]bool, []string) {
	seen := map[string]bool{}
	var dups []string
	for _, l := range prose(text) {
		m := headingRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		a := slug(m[2])
		if seen[a] {
			dups = append(dups, m[2])
		}
		seen[a] = true
	}
	return seen, dups
}

// TestDocLinksResolve: every relative link in README.md and docs/*.md names
// a file or directory of the repository, and every #anchor a heading of the
// page it points to; no page has two headings with the same anchor.
func TestDocLinksResolve(t *testing.T) {
	t.Parallel()
	texts := map[string]string{}
	read := func(path string) string {
		if s, ok := texts[path]; ok {
			return s
		}
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		texts[path] = string(b)
		return texts[path]
	}
	links := 0
	for _, page := range pages(t) {
		text := read(page)
		_, dups := anchors(text)
		require.Empty(t, dups, "%s: headings with the same anchor", page)
		for n, l := range prose(text) {
			for _, m := range linkRE.FindAllStringSubmatch(l, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				links++
				file, anchor, _ := strings.Cut(target, "#")
				dest := page
				if file != "" {
					dest = filepath.Join(filepath.Dir(page), file)
					_, err := os.Stat(dest)
					require.NoError(t, err, "%s:%d: link %q", page, n+1, target)
				}
				if anchor == "" {
					continue
				}
				require.True(t, strings.HasSuffix(dest, ".md"), "%s:%d: anchor on a file that is not a page: %q", page, n+1, target)
				have, _ := anchors(read(dest))
				require.True(t, have[anchor], "%s:%d: link %q: %s has no heading with anchor %q", page, n+1, target, dest, anchor)
			}
		}
	}
	require.NotZero(t, links, "no relative links found: the pattern no longer matches")
}

// TestReadmeIsAFrontPage: the README stays short; reference text goes to a
// page under docs/.
func TestReadmeIsAFrontPage(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	lines := strings.Count(string(b), "\n")
	require.Less(t, lines, readmeMaxLines, "README.md has %d lines: move reference text to docs/", lines)
}

func TestSlug(t *testing.T) {
	t.Parallel()
	for heading, want := range map[string]string{
		"Consuming exactly once: the inbox":     "consuming-exactly-once-the-inbox",
		"Whatever the router's middlewares do":  "whatever-the-routers-middlewares-do",
		"Duplicates, and how to drop them":      "duplicates-and-how-to-drop-them",
		"Writing your own `Store`":              "writing-your-own-store",
		"With pgx, or another database library": "with-pgx-or-another-database-library",
	} {
		require.Equal(t, want, slug(heading), heading)
	}
}
