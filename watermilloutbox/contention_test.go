package watermilloutbox

import (
	"errors"
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

func TestMySQLContentionIsRecognisedWithoutLinkingTheDriver(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"deadlock", &mysql.MySQLError{Number: 1213, Message: "Deadlock found"}, true},
		{"lock wait timeout, wrapped", fmt.Errorf("claim: %w", &mysql.MySQLError{Number: 1205}), true},
		{"joined", errors.Join(errors.New("other"), &mysql.MySQLError{Number: 1213}), true},
		{"duplicate key", &mysql.MySQLError{Number: 1062}, false},
		{"plain error", errors.New("Error 1213 (40001): Deadlock found"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, isContention(tc.err))
			require.Equal(t, tc.want, errors.Is(markContention(tc.err), relaystore.ErrContention))
		})
	}
}
