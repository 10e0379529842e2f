package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// baseEnv is a minimal valid environment.
func baseEnv(t *testing.T) {
	t.Helper()
	t.Setenv("RELAY_DSN", "postgres://postgres@127.0.0.1:5432/test")
	t.Setenv("RELAY_KAFKA_BROKERS", "127.0.0.1:9092")
}

// Not parallel: t.Setenv changes the process environment.
func TestParseGood(t *testing.T) {
	baseEnv(t)
	t.Setenv("OUTBOX_BATCH_SIZE", "7")
	t.Setenv("OUTBOX_CLAIM_TIMEOUT_SECONDS", "9")
	s, err := parse([]string{"-lease", "2s", "-ordered=false", "-dialect", "mariadb"})
	require.NoError(t, err)
	require.Equal(t, outbox.MySQL, s.dialect)
	require.Equal(t, 7, s.outbox.BatchSize, "from the environment")
	require.Equal(t, 2*time.Second, s.outbox.ClaimTimeout, "the flag wins")
	require.True(t, s.outbox.DisableOrdering)
	require.Equal(t, []string{"127.0.0.1:9092"}, s.kafkaBrokers)
}

// TestParseGarbage: a bad setting, from a flag or the environment, is an
// error naming it (the binary exits 2 before touching anything).
func TestParseGarbage(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"NaN batch", map[string]string{"OUTBOX_BATCH_SIZE": "NaN"}, nil, `OUTBOX_BATCH_SIZE: invalid value "NaN"`},
		{"NaN lease", map[string]string{"OUTBOX_CLAIM_TIMEOUT_SECONDS": "NaN"}, nil, `OUTBOX_CLAIM_TIMEOUT_SECONDS: invalid value "NaN"`},
		{"negative poll", map[string]string{"OUTBOX_POLLING_INTERVAL_SECONDS": "-1"}, nil, `OUTBOX_POLLING_INTERVAL_SECONDS: invalid value "-1"`},
		{"zero in-flight", map[string]string{"OUTBOX_MAX_IN_FLIGHT": "0"}, nil, `OUTBOX_MAX_IN_FLIGHT: invalid value "0"`},
		{"garbage ordering", map[string]string{"OUTBOX_DISABLE_ORDERING": "maybe"}, nil, `OUTBOX_DISABLE_ORDERING: invalid value "maybe"`},
		{"table injection", map[string]string{"OUTBOX_TABLE": "x; DROP TABLE y"}, nil, `OUTBOX_TABLE: invalid value "x; DROP TABLE y"`},
		{"garbage max bytes", map[string]string{"RELAY_KAFKA_MAX_MESSAGE_BYTES": "1MB"}, nil, "RELAY_KAFKA_MAX_MESSAGE_BYTES"},
		{"negative max bytes", nil, []string{"-kafka-max-message-bytes", "-5"}, "kafka-max-message-bytes"},
		{"unknown dialect", map[string]string{"RELAY_DIALECT": "oracle"}, nil, "-dialect"},
		{"unknown sink", nil, []string{"-sink", "nats"}, "-sink"},
		{"no DSN", map[string]string{"RELAY_DSN": ""}, nil, "RELAY_DSN"},
		{"no brokers", map[string]string{"RELAY_KAFKA_BROKERS": " , "}, nil, "RELAY_KAFKA_BROKERS"},
		{"no AMQP URL", nil, []string{"-sink", "amqp"}, "RELAY_AMQP_URL"},
		{"lease too short", nil, []string{"-lease", "10ms"}, "ClaimTimeout"},
		{"zero batch flag", nil, []string{"-batch", "0"}, "BatchSize"},
		{"garbage lease flag", nil, []string{"-lease", "NaN"}, "-lease"},
		{"garbage batch flag", nil, []string{"-batch", "many"}, "-batch"},
		{"unknown flag", nil, []string{"-bogus"}, "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			baseEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := parse(tc.args)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
