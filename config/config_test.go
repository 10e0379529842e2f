package config_test

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
)

func TestDefault(t *testing.T) {
	t.Parallel()

	c := config.Default()

	require.Equal(t, config.Config{
		Table:              config.DefaultTable,
		PollingInterval:    config.DefaultPollingInterval,
		BatchSize:          config.DefaultBatchSize,
		MaxRetryCount:      config.DefaultMaxRetryCount,
		ClaimTimeout:       config.DefaultClaimTimeout,
		RetryBackoffMin:    config.DefaultRetryBackoffMin,
		RetryBackoffMax:    config.DefaultRetryBackoffMax,
		PublishedRetention: 0,
		MaxInFlight:        config.DefaultMaxInFlight,
		MaxInFlightBytes:   64 << 20,
		DisableOrdering:    false,
		MaxPayloadBytes:    0,
		MaxMetadataBytes:   64 << 10,
		DisableNotify:      false,
		NotifyInterval:     config.DefaultNotifyInterval,

		UnavailableBackoffMax: config.DefaultUnavailableBackoffMax,
		RelayTimeout:          config.DefaultRelayTimeout,
	}, c)
	require.NoError(t, c.Validate())

	// The values of the plugin this library replaces; changing them changes
	// behaviour for every deployment that relies on the defaults.
	require.Equal(t, "watermill_outbox", c.Table)
	require.Equal(t, time.Second, c.PollingInterval)
	require.Equal(t, 100, c.BatchSize)
	require.Equal(t, 5, c.MaxRetryCount)
	require.Equal(t, 300*time.Second, c.ClaimTimeout)
	require.Equal(t, time.Second, c.RetryBackoffMin)
	require.Equal(t, 60*time.Second, c.RetryBackoffMax)
	require.Equal(t, 1000, c.MaxInFlight)
	require.Equal(t, 5*time.Millisecond, c.NotifyInterval)
	require.Equal(t, time.Second, c.UnavailableBackoffMax)
	require.Equal(t, 3*time.Second, c.RelayTimeout)
}

func TestSetDefaults(t *testing.T) {
	t.Parallel()

	t.Run("zero config gets defaults", func(t *testing.T) {
		t.Parallel()
		var c config.Config
		c.SetDefaults()
		require.Equal(t, config.Default(), c)
	})

	t.Run("set fields are kept", func(t *testing.T) {
		t.Parallel()
		c := config.Config{
			Table:              "app.outbox",
			PollingInterval:    50 * time.Millisecond,
			BatchSize:          7,
			MaxRetryCount:      2,
			ClaimTimeout:       time.Minute,
			RetryBackoffMin:    2 * time.Second,
			RetryBackoffMax:    time.Hour,
			PublishedRetention: 24 * time.Hour,
			MaxInFlight:        1,
			MaxInFlightBytes:   1,
			DisableOrdering:    true,
			MaxPayloadBytes:    1 << 20,
			MaxMetadataBytes:   1,
			DisableNotify:      true,
			NotifyInterval:     20 * time.Millisecond,

			UnavailableBackoffMax: 5 * time.Second,
			RelayTimeout:          time.Second,
		}
		want := c
		c.SetDefaults()
		require.Equal(t, want, c)
	})

	t.Run("negative values are left for Validate", func(t *testing.T) {
		t.Parallel()
		c := config.Config{BatchSize: -1, ClaimTimeout: -time.Second}
		c.SetDefaults()
		require.Equal(t, -1, c.BatchSize)
		require.Equal(t, -time.Second, c.ClaimTimeout)
	})
}

func TestValidate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		modify  func(*config.Config)
		wantErr string // empty: valid
	}{
		{"defaults", func(*config.Config) {}, ""},
		{"schema-qualified table", func(c *config.Config) { c.Table = "app.outbox" }, ""},
		{"bad table", func(c *config.Config) { c.Table = "x; DROP TABLE y" }, `Table: must be a SQL identifier`},
		{"bad table value", func(c *config.Config) { c.Table = "a-b" }, `got "a-b"`},
		{"empty table", func(c *config.Config) { c.Table = "" }, `Table: `},
		{"minimum polling interval", func(c *config.Config) { c.PollingInterval = time.Millisecond }, ""},
		{"polling interval too short", func(c *config.Config) { c.PollingInterval = time.Microsecond }, "PollingInterval: must be at least 1ms, got 1µs"},
		{"negative polling interval", func(c *config.Config) { c.PollingInterval = -time.Second }, "PollingInterval: must be at least 1ms, got -1s"},
		{"max batch size", func(c *config.Config) { c.BatchSize = config.MaxBatchSize }, ""},
		{"negative batch size", func(c *config.Config) { c.BatchSize = -3 }, "BatchSize: must be between 1 and 10000, got -3"},
		{"batch size too large", func(c *config.Config) { c.BatchSize = config.MaxBatchSize + 1 }, "BatchSize: must be between 1 and 10000, got 10001"},
		{"zero retry count", func(c *config.Config) { c.MaxRetryCount = 0 }, "MaxRetryCount: must be at least 1, got 0"},
		{"negative retry count", func(c *config.Config) { c.MaxRetryCount = -1 }, "MaxRetryCount: must be at least 1, got -1"},
		{"minimum claim timeout", func(c *config.Config) { c.ClaimTimeout = time.Second }, ""},
		{"claim timeout too short", func(c *config.Config) { c.ClaimTimeout = 999 * time.Millisecond }, "ClaimTimeout: must be at least 1s, got 999ms"},
		{"negative claim timeout", func(c *config.Config) { c.ClaimTimeout = -time.Minute }, "ClaimTimeout: must be at least 1s, got -1m0s"},
		{"equal backoffs", func(c *config.Config) { c.RetryBackoffMin, c.RetryBackoffMax = time.Second, time.Second }, ""},
		{"negative backoff min", func(c *config.Config) { c.RetryBackoffMin = -time.Second }, "RetryBackoffMin: must be positive, got -1s"},
		{"negative backoff max", func(c *config.Config) { c.RetryBackoffMax = -time.Second }, "RetryBackoffMax: must be positive, got -1s"},
		{"backoff min above max", func(c *config.Config) { c.RetryBackoffMin = 2 * time.Minute }, "RetryBackoffMin: must not exceed RetryBackoffMax (1m0s), got 2m0s"},
		{"published retention", func(c *config.Config) { c.PublishedRetention = time.Hour }, ""},
		{"negative published retention", func(c *config.Config) { c.PublishedRetention = -time.Hour }, "PublishedRetention: must not be negative, got -1h0m0s"},
		{"zero max in flight", func(c *config.Config) { c.MaxInFlight = 0 }, "MaxInFlight: must be at least 1, got 0"},
		{"negative max in flight", func(c *config.Config) { c.MaxInFlight = -5 }, "MaxInFlight: must be at least 1, got -5"},
		{"zero max in flight bytes", func(c *config.Config) { c.MaxInFlightBytes = 0 }, "MaxInFlightBytes: must be at least 1, got 0"},
		{"negative max in flight bytes", func(c *config.Config) { c.MaxInFlightBytes = -1 }, "MaxInFlightBytes: must be at least 1, got -1"},
		{"metadata limit", func(c *config.Config) { c.MaxMetadataBytes = 1 }, ""},
		{"zero metadata limit", func(c *config.Config) { c.MaxMetadataBytes = 0 }, "MaxMetadataBytes: must be at least 1, got 0"},
		{"negative metadata limit", func(c *config.Config) { c.MaxMetadataBytes = -1 }, "MaxMetadataBytes: must be at least 1, got -1"},
		{"payload limit", func(c *config.Config) { c.MaxPayloadBytes = 1 }, ""},
		{"negative payload limit", func(c *config.Config) { c.MaxPayloadBytes = -1 }, "MaxPayloadBytes: must not be negative, got -1"},
		{"notify off", func(c *config.Config) { c.DisableNotify = true }, ""},
		{"minimum notify interval", func(c *config.Config) { c.NotifyInterval = 100 * time.Microsecond }, ""},
		{"maximum notify interval", func(c *config.Config) { c.NotifyInterval = config.MaxNotifyInterval }, ""},
		{"notify interval too short", func(c *config.Config) { c.NotifyInterval = time.Microsecond }, "NotifyInterval: must be between 100µs and 1s, got 1µs"},
		{"notify interval too long", func(c *config.Config) { c.NotifyInterval = 2 * time.Second }, "NotifyInterval: must be between 100µs and 1s, got 2s"},
		{"negative notify interval", func(c *config.Config) { c.NotifyInterval = -time.Millisecond }, "NotifyInterval: must be between 100µs and 1s, got -1ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := config.Default()
			tt.modify(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestValidate_reportsAllProblems(t *testing.T) {
	t.Parallel()

	c := config.Default()
	c.BatchSize = -3
	c.ClaimTimeout = 0
	c.Table = "a b"

	err := c.Validate()

	require.Error(t, err)
	for _, field := range []string{"BatchSize", "ClaimTimeout", "Table"} {
		require.ErrorContains(t, err, field+":")
	}
	require.Len(t, err.(interface{ Unwrap() []error }).Unwrap(), 3)
}

func TestValidate_zeroConfigNeedsSetDefaults(t *testing.T) {
	t.Parallel()

	require.Error(t, config.Config{}.Validate())
}

func TestFromEnvMap_unsetKeepsDefaults(t *testing.T) {
	t.Parallel()

	for name, environ := range map[string]map[string]string{
		"nil":   nil,
		"empty": {},
		"empty values": {
			"OUTBOX_BATCH_SIZE":               "",
			"OUTBOX_POLLING_INTERVAL_SECONDS": "",
		},
		"other prefixes only": {"BATCH_SIZE": "7", "ORDERS_OUTBOX_BATCH_SIZE": "7"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := config.FromEnvMap(config.DefaultEnvPrefix, environ)
			require.NoError(t, err)
			require.Equal(t, config.Default(), c)
		})
	}
}

func TestFromEnvMap_allVariables(t *testing.T) {
	t.Parallel()

	c, err := config.FromEnvMap("OUTBOX_", map[string]string{
		"OUTBOX_TABLE":                       "app.outbox",
		"OUTBOX_POLLING_INTERVAL_SECONDS":    "0.25",
		"OUTBOX_BATCH_SIZE":                  "500",
		"OUTBOX_MAX_RETRY_COUNT":             "10",
		"OUTBOX_CLAIM_TIMEOUT_SECONDS":       "90",
		"OUTBOX_RETRY_BACKOFF_MIN_SECONDS":   "500ms",
		"OUTBOX_RETRY_BACKOFF_MAX_SECONDS":   "5m",
		"OUTBOX_PUBLISHED_RETENTION_SECONDS": "86400",
		"OUTBOX_MAX_IN_FLIGHT":               "32",
		"OUTBOX_MAX_IN_FLIGHT_BYTES":         "1000000",
		"OUTBOX_DISABLE_ORDERING":            "true",
		"OUTBOX_MAX_PAYLOAD_BYTES":           "1048576",
		"OUTBOX_MAX_METADATA_BYTES":          "4096",
		"OUTBOX_DISABLE_NOTIFY":              "true",
		"OUTBOX_NOTIFY_INTERVAL_SECONDS":     "0.002",

		"OUTBOX_UNAVAILABLE_BACKOFF_MAX_SECONDS": "2.5",
		"OUTBOX_RELAY_TIMEOUT_SECONDS":           "4",
	})

	require.NoError(t, err)
	require.Equal(t, config.Config{
		Table:              "app.outbox",
		PollingInterval:    250 * time.Millisecond,
		BatchSize:          500,
		MaxRetryCount:      10,
		ClaimTimeout:       90 * time.Second,
		RetryBackoffMin:    500 * time.Millisecond,
		RetryBackoffMax:    5 * time.Minute,
		PublishedRetention: 24 * time.Hour,
		MaxInFlight:        32,
		MaxInFlightBytes:   1000000,
		DisableOrdering:    true,
		MaxPayloadBytes:    1 << 20,
		MaxMetadataBytes:   4096,
		DisableNotify:      true,
		NotifyInterval:     2 * time.Millisecond,

		UnavailableBackoffMax: 2500 * time.Millisecond,
		RelayTimeout:          4 * time.Second,
	}, c)
}

func TestFromEnvMap_durations(t *testing.T) {
	t.Parallel()

	tests := []struct {
		value string
		want  time.Duration
	}{
		{"1.5", 1500 * time.Millisecond},
		{"1500ms", 1500 * time.Millisecond},
		{"300", 300 * time.Second},
		{"0.25", 250 * time.Millisecond},
		{".5", 500 * time.Millisecond},
		{"2.", 2 * time.Second},
		{"0.1", 100 * time.Millisecond},
		{"0.000001", time.Microsecond},
		{"5m", 5 * time.Minute},
		{"1m30s", 90 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			t.Parallel()
			c, err := config.FromEnvMap("OUTBOX_", map[string]string{
				"OUTBOX_CLAIM_TIMEOUT_SECONDS":       "3600", // above every value, so all are valid
				"OUTBOX_PUBLISHED_RETENTION_SECONDS": tt.value,
			})
			require.NoError(t, err)
			require.Equal(t, tt.want, c.PublishedRetention)
		})
	}
}

func TestFromEnvMap_meaningfulZeros(t *testing.T) {
	t.Parallel()

	c, err := config.FromEnvMap("OUTBOX_", map[string]string{
		"OUTBOX_PUBLISHED_RETENTION_SECONDS": "0",
		"OUTBOX_MAX_PAYLOAD_BYTES":           "0",
		"OUTBOX_DISABLE_ORDERING":            "false",
		"OUTBOX_DISABLE_NOTIFY":              "false",
	})

	require.NoError(t, err)
	require.Equal(t, config.Default(), c)
}

func TestFromEnvMap_invalid(t *testing.T) {
	t.Parallel()

	tests := []struct {
		variable string
		value    string
		want     string // besides the variable and the quoted value
	}{
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "abc", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "1.5.2", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "NaN", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "Inf", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "+Inf", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "1e3", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "0x10", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", " 1", "want seconds"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "-1", "must not be negative"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "-1.5", "must not be negative"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "-5m", "must not be negative"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "99999999999", "out of range"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "0", "must be at least 1ms"},
		{"OUTBOX_POLLING_INTERVAL_SECONDS", "0.0001", "must be at least 1ms"},
		{"OUTBOX_CLAIM_TIMEOUT_SECONDS", "0", "must be at least 1s"},
		{"OUTBOX_CLAIM_TIMEOUT_SECONDS", "0.5", "must be at least 1s"},
		{"OUTBOX_CLAIM_TIMEOUT_SECONDS", "NaN", "want seconds"},
		{"OUTBOX_RETRY_BACKOFF_MIN_SECONDS", "0", "must be positive"},
		{"OUTBOX_RETRY_BACKOFF_MIN_SECONDS", "120", "must not exceed OUTBOX_RETRY_BACKOFF_MAX_SECONDS (1m0s)"},
		{"OUTBOX_RETRY_BACKOFF_MAX_SECONDS", "0", "must be positive"},
		{"OUTBOX_PUBLISHED_RETENTION_SECONDS", "-1", "must not be negative"},
		{"OUTBOX_PUBLISHED_RETENTION_SECONDS", "forever", "want seconds"},
		{"OUTBOX_NOTIFY_INTERVAL_SECONDS", "0", "must be between 100µs and 1s"},
		{"OUTBOX_NOTIFY_INTERVAL_SECONDS", "5", "must be between 100µs and 1s"},
		{"OUTBOX_NOTIFY_INTERVAL_SECONDS", "soon", "want seconds"},
		{"OUTBOX_DISABLE_NOTIFY", "maybe", "want true or false"},
		{"OUTBOX_BATCH_SIZE", "0", "must be between 1 and 10000"},
		{"OUTBOX_BATCH_SIZE", "-3", "must be between 1 and 10000"},
		{"OUTBOX_BATCH_SIZE", "10001", "must be between 1 and 10000"},
		{"OUTBOX_BATCH_SIZE", "abc", "want an integer"},
		{"OUTBOX_BATCH_SIZE", "1.5", "want an integer"},
		{"OUTBOX_BATCH_SIZE", "99999999999999999999", "out of range"},
		{"OUTBOX_MAX_RETRY_COUNT", "0", "must be at least 1"},
		{"OUTBOX_MAX_RETRY_COUNT", "-1", "must be at least 1"},
		{"OUTBOX_MAX_IN_FLIGHT", "0", "must be at least 1"},
		{"OUTBOX_MAX_IN_FLIGHT", "many", "want an integer"},
		{"OUTBOX_MAX_IN_FLIGHT_BYTES", "0", "must be at least 1"},
		{"OUTBOX_MAX_IN_FLIGHT_BYTES", "64MiB", "want an integer"},
		{"OUTBOX_MAX_METADATA_BYTES", "0", "must be at least 1"},
		{"OUTBOX_MAX_METADATA_BYTES", "-1", "must be at least 1"},
		{"OUTBOX_MAX_PAYLOAD_BYTES", "-1", "must not be negative"},
		{"OUTBOX_MAX_PAYLOAD_BYTES", "1MB", "want an integer"},
		{"OUTBOX_DISABLE_ORDERING", "yes", "want true or false"},
		{"OUTBOX_TABLE", "x; DROP TABLE y", "must be a SQL identifier"},
		{"OUTBOX_TABLE", "a.b.c", "must be a SQL identifier"},
	}
	for _, tt := range tests {
		t.Run(tt.variable+"="+tt.value, func(t *testing.T) {
			t.Parallel()
			c, err := config.FromEnvMap("OUTBOX_", map[string]string{tt.variable: tt.value})
			require.ErrorContains(t, err, tt.variable+`: invalid value "`+tt.value+`": `+tt.want)
			require.Equal(t, config.Config{}, c)
		})
	}
}

func TestFromEnvMap_crossFieldErrorNamesBothVariables(t *testing.T) {
	t.Parallel()

	// Only the maximum is set, below the default minimum.
	_, err := config.FromEnvMap("OUTBOX_", map[string]string{"OUTBOX_RETRY_BACKOFF_MAX_SECONDS": "0.5"})

	require.EqualError(t, err, "config: OUTBOX_RETRY_BACKOFF_MIN_SECONDS: must not exceed OUTBOX_RETRY_BACKOFF_MAX_SECONDS (500ms), got 1s")
}

func TestFromEnvMap_reportsAllProblems(t *testing.T) {
	t.Parallel()

	_, err := config.FromEnvMap("OUTBOX_", map[string]string{
		"OUTBOX_POLLING_INTERVAL_SECONDS": "abc",
		"OUTBOX_BATCH_SIZE":               "0",
		"OUTBOX_DISABLE_ORDERING":         "maybe",
	})

	require.ErrorContains(t, err, `OUTBOX_POLLING_INTERVAL_SECONDS: invalid value "abc"`)
	require.ErrorContains(t, err, `OUTBOX_BATCH_SIZE: invalid value "0"`)
	require.ErrorContains(t, err, `OUTBOX_DISABLE_ORDERING: invalid value "maybe"`)
	require.True(t, strings.HasPrefix(err.Error(), "config: "), err.Error())
}

func TestFromEnvMap_customPrefix(t *testing.T) {
	t.Parallel()

	environ := map[string]string{
		"ORDERS_OUTBOX_TABLE":      "orders_outbox",
		"ORDERS_OUTBOX_BATCH_SIZE": "50",
		"OUTBOX_BATCH_SIZE":        "7", // another outbox's; ignored
		"OUTBOX_MAX_IN_FLIGHT":     "0", // invalid, but not ours
	}

	c, err := config.FromEnvMap("ORDERS_OUTBOX_", environ)
	require.NoError(t, err)
	require.Equal(t, "orders_outbox", c.Table)
	require.Equal(t, 50, c.BatchSize)
	require.Equal(t, config.DefaultMaxInFlight, c.MaxInFlight)

	_, err = config.FromEnvMap("ORDERS_OUTBOX_", map[string]string{"ORDERS_OUTBOX_CLAIM_TIMEOUT_SECONDS": "0"})
	require.ErrorContains(t, err, `ORDERS_OUTBOX_CLAIM_TIMEOUT_SECONDS: invalid value "0"`)
}

// Not parallel: t.Setenv changes the process environment.
func TestFromEnvWithPrefix_readsProcessEnvironment(t *testing.T) {
	t.Setenv("CONFIGTEST_OUTBOX_BATCH_SIZE", "42")
	t.Setenv("CONFIGTEST_OUTBOX_CLAIM_TIMEOUT_SECONDS", "1.5")

	c, err := config.FromEnvWithPrefix("CONFIGTEST_OUTBOX_")
	require.NoError(t, err)
	require.Equal(t, 42, c.BatchSize)
	require.Equal(t, 1500*time.Millisecond, c.ClaimTimeout)

	t.Setenv("CONFIGTEST_OUTBOX_BATCH_SIZE", "0")
	_, err = config.FromEnvWithPrefix("CONFIGTEST_OUTBOX_")
	require.ErrorContains(t, err, `CONFIGTEST_OUTBOX_BATCH_SIZE: invalid value "0"`)
}

// TestEnvVariablesDocumented keeps the fields, their env tags and the table
// in doc.go in step.
func TestEnvVariablesDocumented(t *testing.T) {
	t.Parallel()

	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)

	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		key := f.Tag.Get("env")
		require.NotEmpty(t, key, "field %s has no env tag", f.Name)
		if f.Type == reflect.TypeFor[time.Duration]() {
			require.True(t, strings.HasSuffix(key, "_SECONDS"), "duration field %s: variable %s should end in _SECONDS", f.Name, key)
		}
		require.Regexp(t, `(?m)^//\s+OUTBOX_`+key+`\s+`+f.Name+`\s`, string(doc), "doc.go table lacks %s", f.Name)
	}
}

// TestFromEnvMap_emptyTableRefused: OUTBOX_TABLE set but empty is an
// error, not the default table (which could be another service's).
func TestFromEnvMap_emptyTableRefused(t *testing.T) {
	t.Parallel()
	_, err := config.FromEnvMap(config.DefaultEnvPrefix, map[string]string{"OUTBOX_TABLE": ""})
	require.ErrorContains(t, err, "OUTBOX_TABLE: set but empty")
	_, err = config.FromEnvMap("ORDERS_", map[string]string{"ORDERS_TABLE": ""})
	require.ErrorContains(t, err, "ORDERS_TABLE: set but empty")
}

// TestListenURL: a PostgreSQL URL is taken; anything else is an error that
// names the variable and never shows the password.
func TestListenURL(t *testing.T) {
	t.Parallel()
	c, err := config.FromEnvMap("OUTBOX_", map[string]string{"OUTBOX_LISTEN_DATABASE_URL": "postgres://app:pw@db:5432/app"})
	require.NoError(t, err)
	require.Equal(t, "postgres://app:pw@db:5432/app", c.ListenURL)
	for _, bad := range []string{"mysql://app:s3cret@db/app", "postgres:///app?password=s3cret", "postgres://app:s3cret@db:port/app"} {
		_, err := config.FromEnvMap("OUTBOX_", map[string]string{"OUTBOX_LISTEN_DATABASE_URL": bad})
		require.ErrorContains(t, err, "OUTBOX_LISTEN_DATABASE_URL: invalid value", bad)
		require.NotContains(t, err.Error(), "s3cret", bad)
		c := config.Default()
		c.ListenURL = bad
		require.ErrorContains(t, c.Validate(), "ListenURL:", bad)
		require.NotContains(t, c.Validate().Error(), "s3cret", bad)
	}
}
