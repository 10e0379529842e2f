package config_test

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// docDefault writes a default the way docs/configuration.md does: `name`,
// "empty", 1 s / 5 ms, 64 KiB / 64 MiB, plain numbers and booleans.
func docDefault(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case string:
		if x == "" {
			return "empty"
		}
		return "`" + x + "`"
	case time.Duration:
		switch {
		case x == 0:
			return "0"
		case x%time.Second == 0:
			return fmt.Sprintf("%d s", x/time.Second)
		case x%time.Millisecond == 0:
			return fmt.Sprintf("%d ms", x/time.Millisecond)
		}
		return x.String()
	case int:
		switch {
		case x != 0 && x%(1<<20) == 0:
			return fmt.Sprintf("%d MiB", x>>20)
		case x != 0 && x%(1<<10) == 0:
			return fmt.Sprintf("%d KiB", x>>10)
		}
		return fmt.Sprint(x)
	}
	return fmt.Sprint(v.Interface())
}

// TestConfigurationReference keeps the table of docs/configuration.md in
// step with Config: one row per field, with its variable and its default
// as config.Default() has it, and no row for a field that does not exist.
func TestConfigurationReference(t *testing.T) {
	t.Parallel()

	doc, err := os.ReadFile("../docs/configuration.md")
	require.NoError(t, err)
	type row struct{ env, def string }
	rows := map[string]row{}
	re := regexp.MustCompile("(?m)^\\| `([A-Za-z]+)` \\| `(OUTBOX_[A-Z_]+)` \\| ([^|]+?) \\|")
	for _, m := range re.FindAllStringSubmatch(string(doc), -1) {
		require.NotContains(t, rows, m[1], "two rows for %s", m[1])
		rows[m[1]] = row{m[2], strings.TrimSpace(m[3])}
	}

	def := reflect.ValueOf(config.Default())
	typ := def.Type()
	for i := range typ.NumField() {
		f := typ.Field(i)
		r, ok := rows[f.Name]
		require.True(t, ok, "docs/configuration.md has no row for %s", f.Name)
		require.Equal(t, "OUTBOX_"+f.Tag.Get("env"), r.env, "variable of %s", f.Name)
		require.Equal(t, docDefault(def.Field(i)), r.def, "default of %s", f.Name)
		delete(rows, f.Name)
	}
	require.Empty(t, rows, "docs/configuration.md has rows for fields Config does not have")
}
