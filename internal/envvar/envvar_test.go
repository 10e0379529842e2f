package envvar_test

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/envvar"
)

func TestUnknownVariables(t *testing.T) {
	t.Parallel()
	environ := map[string]string{
		"OUTBOX_BATCHSIZE": "50", "OUTBOX_BATCH_SIZE": "7", "OUTBOX_DATABASE_URL": "x", "OUTBOX_TABEL": "t",
		"OUTBOX_max_retry_count": "3", "OTHER_BATCHSIZE": "1",
	}
	require.Equal(t, []string{
		"OUTBOX_BATCHSIZE (did you mean OUTBOX_BATCH_SIZE?)",
		"OUTBOX_TABEL",
		"OUTBOX_max_retry_count (did you mean OUTBOX_MAX_RETRY_COUNT?)",
	}, envvar.Unknown(config.DefaultEnvPrefix, environ, reflect.TypeFor[config.Config](), "OUTBOX_DATABASE_URL"))
}
