package main

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// relayEnv is a minimal valid environment for the relay.
func relayEnv(t *testing.T) {
	t.Helper()
	t.Setenv("OUTBOX_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
	t.Setenv("OUTBOX_KAFKA_BROKERS", "127.0.0.1:9092")
	for _, v := range []string{"OUTBOX_SINK", "OUTBOX_AMQP_URL", "OUTBOX_KAFKA_MAX_MESSAGE_BYTES", "OUTBOX_METRICS_ADDR",
		"OUTBOX_HEALTH_MAX_PAUSE_SECONDS", "OUTBOX_TABLE", "OUTBOX_ADMIN", "OUTBOX_ADMIN_WRITES", "OUTBOX_LISTEN_DATABASE_URL"} {
		t.Setenv(v, "") // restored after the test
		require.NoError(t, os.Unsetenv(v))
	}
}

func parseRelay(args ...string) (relaySettings, error) {
	a := &app{stdout: io.Discard, stderr: io.Discard}
	return a.parseRelay(args)
}

// Not parallel: t.Setenv changes the process environment.
func TestParseGood(t *testing.T) {
	relayEnv(t)
	t.Setenv("OUTBOX_BATCH_SIZE", "7")
	t.Setenv("OUTBOX_CLAIM_TIMEOUT_SECONDS", "9")
	t.Setenv("OUTBOX_HEALTH_MAX_PAUSE_SECONDS", "1.5")
	s, err := parseRelay("-lease", "2s", "--ordered=false", "--database-url", "root@tcp(127.0.0.1:3306)/test", "--metrics-addr", ":0")
	require.NoError(t, err)
	require.Equal(t, outbox.MySQL, s.db.Dialect, "the flag wins over OUTBOX_DATABASE_URL")
	require.Equal(t, 7, s.outbox.BatchSize, "from the environment")
	require.Equal(t, 2*time.Second, s.outbox.ClaimTimeout, "the flag wins")
	require.True(t, s.outbox.DisableOrdering)
	require.Equal(t, "kafka", s.sink, "the only destination set")
	require.Equal(t, []string{"127.0.0.1:9092"}, s.kafkaBrokers)
	require.Equal(t, ":0", s.metricsAddr)
	require.Equal(t, 1500*time.Millisecond, s.maxPause)

	t.Setenv("OUTBOX_KAFKA_BROKERS", "")
	t.Setenv("OUTBOX_HEALTH_MAX_PAUSE_SECONDS", "")
	t.Setenv("OUTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
	s, err = parseRelay()
	require.NoError(t, err)
	require.Equal(t, "amqp", s.sink)
	require.Equal(t, defaultMaxPause, s.maxPause)
	require.False(t, s.admin, "the admin page is off by default")

	t.Setenv("OUTBOX_ADMIN", "true")
	s, err = parseRelay("--metrics-addr", ":0", "--admin-writes", "1")
	require.NoError(t, err)
	require.True(t, s.admin)
	require.True(t, s.adminWrites)
}

// TestParseGarbage: a bad setting, from a flag or the environment, is an
// error naming it (the command exits 2 before touching anything).
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
		{"table flag injection", nil, []string{"--table", "x; DROP TABLE y"}, `--table: invalid table name`},
		{"garbage max bytes", map[string]string{"OUTBOX_KAFKA_MAX_MESSAGE_BYTES": "1MB"}, nil, "OUTBOX_KAFKA_MAX_MESSAGE_BYTES"},
		{"negative max bytes", nil, []string{"--kafka-max-message-bytes", "-5"}, "--kafka-max-message-bytes"},
		{"unknown database", map[string]string{"OUTBOX_DATABASE_URL": "oracle://db"}, nil, "OUTBOX_DATABASE_URL: unsupported database (oracle://)"},
		{"bad database flag", nil, []string{"--database-url", "postgres://h:99999999/db"}, "--database-url: invalid PostgreSQL URL"},
		{"unknown sink", nil, []string{"--sink", "nats"}, "--sink: want kafka or amqp"},
		{"unknown sink env", map[string]string{"OUTBOX_SINK": "nats"}, nil, "OUTBOX_SINK: want kafka or amqp"},
		{"no database", map[string]string{"OUTBOX_DATABASE_URL": ""}, nil, "OUTBOX_DATABASE_URL"},
		{"no brokers", map[string]string{"OUTBOX_KAFKA_BROKERS": " , "}, nil, "OUTBOX_KAFKA_BROKERS"},
		{"both destinations", map[string]string{"OUTBOX_AMQP_URL": "amqp://h/"}, nil, "--sink (OUTBOX_SINK): both"},
		{"no AMQP URL", nil, []string{"--sink", "amqp"}, "OUTBOX_AMQP_URL"},
		{"bad metrics address", nil, []string{"--metrics-addr", "9090"}, "--metrics-addr: want host:port"},
		{"bad metrics address env", map[string]string{"OUTBOX_METRICS_ADDR": "localhost"}, nil, "OUTBOX_METRICS_ADDR: want host:port"},
		{"bad max pause", nil, []string{"--health-max-pause", "soon"}, "--health-max-pause"},
		{"zero max pause", map[string]string{"OUTBOX_HEALTH_MAX_PAUSE_SECONDS": "0"}, nil, "OUTBOX_HEALTH_MAX_PAUSE_SECONDS"},
		{"lease too short", nil, []string{"--lease", "10ms"}, "ClaimTimeout"},
		{"zero batch flag", nil, []string{"--batch", "0"}, "BatchSize"},
		{"garbage lease flag", nil, []string{"--lease", "NaN"}, "--lease"},
		{"garbage batch flag", nil, []string{"-batch", "many"}, "--batch"},
		{"unknown flag", nil, []string{"--bogus"}, "--bogus"},
		{"stray argument", nil, []string{"now"}, `unexpected argument "now"`},
		{"admin without an address", map[string]string{"OUTBOX_ADMIN": "true"}, nil, "OUTBOX_ADMIN): the page is served on --metrics-addr"},
		{"admin garbage", map[string]string{"OUTBOX_ADMIN": "yes please", "OUTBOX_METRICS_ADDR": ":0"}, nil, `OUTBOX_ADMIN: want true or false, got "yes please"`},
		{"admin writes without the page", nil, []string{"--metrics-addr", ":0", "--admin-writes=true"}, "--admin-writes (OUTBOX_ADMIN_WRITES): needs --admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			relayEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := parseRelay(tc.args...)
			require.ErrorContains(t, err, tc.want)
			var ue *usageError
			require.ErrorAs(t, err, &ue, "exit status 2")
		})
	}
}

// TestParseListenURL: --listen-database-url wins over
// OUTBOX_LISTEN_DATABASE_URL, is PostgreSQL's only, and a bad one is named
// without its password.
func TestParseListenURL(t *testing.T) {
	relayEnv(t)
	t.Setenv("OUTBOX_DATABASE_URL", "postgres://postgres@127.0.0.1:6432/test")
	t.Setenv("OUTBOX_LISTEN_DATABASE_URL", "postgres://postgres@10.0.0.1:5432/test")
	s, err := parseRelay()
	require.NoError(t, err)
	require.Equal(t, "postgres://postgres@10.0.0.1:5432/test", s.outbox.ListenURL, "from the environment")
	s, err = parseRelay("--listen-database-url", "postgres://postgres@127.0.0.1:5432/test")
	require.NoError(t, err)
	require.Equal(t, "postgres://postgres@127.0.0.1:5432/test", s.outbox.ListenURL, "the flag wins")

	_, err = parseRelay("--database-url", "root@tcp(127.0.0.1:3306)/test")
	require.ErrorContains(t, err, "--listen-database-url (OUTBOX_LISTEN_DATABASE_URL): LISTEN is PostgreSQL's")
	_, err = parseRelay("--listen-database-url", "mysql://app:s3cret@db/app")
	require.ErrorContains(t, err, "ListenURL")
	require.NotContains(t, err.Error(), "s3cret")
}
