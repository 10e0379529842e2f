package sqlident_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
)

func TestValidTableName(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		want bool
	}{
		{"outbox", true},
		{"public.outbox", true},
		{"_x1", true},
		{"watermill_outbox", true},
		{"Outbox_2", true},
		{strings.Repeat("a", 48), true},
		{strings.Repeat("s", 48) + "." + strings.Repeat("t", 48), true},

		{"x; DROP TABLE y", false},
		{`"a"`, false},
		{"", false},
		{"a b", false},
		{"a.b.c", false},
		{"a-b", false},
		{strings.Repeat("a", 49), false},
		{"public." + strings.Repeat("a", 49), false},
		{"1outbox", false},
		{".outbox", false},
		{"outbox.", false},
		{"outbox\n", false},
		{"tablé", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, sqlident.ValidTable(tt.name))
		})
	}
}

func TestNotifyChannel(t *testing.T) {
	t.Parallel()
	require.Equal(t, "outbox:app.orders_outbox", sqlident.NotifyChannel("app.orders_outbox"))
	long := strings.Repeat("a", 48) + "." + strings.Repeat("b", 48)
	c := sqlident.NotifyChannel(long)
	require.LessOrEqual(t, len(c), 63, "PostgreSQL truncates longer channel names")
	require.NotEqual(t, c, sqlident.NotifyChannel(long[:len(long)-1]+"c"))
}
