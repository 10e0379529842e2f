package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// The text output of dead list and of the dry runs (printDead) cannot be
// forged by what a row holds: a key with a newline and tabs adds no row,
// terminal escapes and invalid bytes are shown escaped, as --json does.
func TestPrintDeadEscapesControlCharacters(t *testing.T) {
	t.Parallel()
	now := time.Now()
	row := func(id int64, topic, key, lastErr string) outbox.DeadRow {
		return outbox.DeadRow{Row: relaystore.Row{ID: id, Topic: topic, PartitionKey: key, CreatedAt: now}, LastError: lastErr}
	}
	rows := []outbox.DeadRow{
		row(1, "orders", "k\n999\tfake.topic\tforged\t1\t0s\tall good", "broker said no"),
		row(2, "orders\x1b[2K", "\x1b]0;owned\x07", "error \x1b[31mred\x1b[0m"),
		row(3, "bad\xff", "\u202eevil", "plain"),
		row(4, "orders", "café", "ok"),
	}
	var out bytes.Buffer
	require.NoError(t, printDead(&out, rows, now))
	text := out.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	require.Len(t, lines, 1+len(rows), "one line per row, none forged:\n%s", text)
	for _, c := range []string{"\x1b", "\x07", "\xff", "\u202e"} {
		require.NotContains(t, text, c)
	}
	require.Contains(t, lines[1], `"k\n999\tfake.topic\tforged\t1\t0s\tall good"`)
	require.Contains(t, lines[2], `"orders\x1b[2K"`)
	require.Contains(t, lines[3], `"bad\xff"`)
	require.Contains(t, lines[3], `"\u202eevil"`)
	require.Contains(t, lines[4], "café", "printable text is shown as it is")
}

func TestDisplay(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":          "",
		"orders":    "orders",
		"a b":       "a b",
		"café �":    "café �",
		"a\tb":      `"a\tb"`,
		"\x00":      `"\x00"`,
		"\xff":      `"\xff"`,
		`"quoted"`:  `"\"quoted\""`,
		"x\u2028y":  `"x\u2028y"`,
		"\x1b[31m!": `"\x1b[31m!"`,
	} {
		require.Equal(t, want, display(in), "%q", in)
	}
}
