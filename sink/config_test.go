package sink

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// requireConfigCheck asserts that config.Validate accepts it when wantErr
// is empty, and otherwise that both Validate and the constructor refuse it
// with wantErr, the constructor as "invalid config".
func requireConfigCheck[C interface{ Validate() error }](t *testing.T, config C, wantErr string, construct func(C) error) {
	t.Helper()
	err := config.Validate()
	if wantErr == "" {
		require.NoError(t, err)
		return
	}
	require.ErrorContains(t, err, wantErr)

	err = construct(config)
	require.ErrorContains(t, err, "invalid config")
	require.ErrorContains(t, err, wantErr)
}
