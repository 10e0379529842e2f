// Package config holds the settings shared by the outbox's store,
// publisher and relay: which table to use, how the relay polls, claims and
// retries rows, and how long published rows are kept. A Config is given
// once, to the store (watermilloutbox.NewSQLStore); the publisher and the
// relay built on the store take their settings from it.
//
// A zero field means "use the default", except where a field's comment says
// zero has a meaning of its own. Code that builds a Config calls SetDefaults
// and then Validate; Default returns a Config with every default filled in.
//
// # Environment variables
//
// FromEnv reads the variables below, each with the prefix "OUTBOX_";
// FromEnvWithPrefix takes another prefix, used verbatim (e.g.
// "ORDERS_OUTBOX_"). A variable that is unset, or set to the empty string,
// keeps its default. A variable that is set must hold a valid value: an
// explicit 0 is an error, not a request for the default, except for the two
// variables whose 0 has a meaning of its own.
//
//	Variable                           Field               Default           Zero
//	OUTBOX_TABLE                       Table               watermill_outbox  -
//	OUTBOX_POLLING_INTERVAL_SECONDS    PollingInterval     1                 error
//	OUTBOX_BATCH_SIZE                  BatchSize           100               error
//	OUTBOX_MAX_RETRY_COUNT             MaxRetryCount       5                 error
//	OUTBOX_CLAIM_TIMEOUT_SECONDS       ClaimTimeout        300               error
//	OUTBOX_RETRY_BACKOFF_MIN_SECONDS   RetryBackoffMin     1                 error
//	OUTBOX_RETRY_BACKOFF_MAX_SECONDS   RetryBackoffMax     60                error
//	OUTBOX_PUBLISHED_RETENTION_SECONDS PublishedRetention  0                 delete at once
//	OUTBOX_MAX_IN_FLIGHT               MaxInFlight         1000              error
//	OUTBOX_MAX_IN_FLIGHT_BYTES         MaxInFlightBytes    67108864 (64 MiB) error
//	OUTBOX_DISABLE_ORDERING            DisableOrdering     false             -
//	OUTBOX_STRICT_ORDER                StrictOrder         false             -
//	OUTBOX_MAX_PAYLOAD_BYTES           MaxPayloadBytes     0                 no limit
//	OUTBOX_MAX_METADATA_BYTES          MaxMetadataBytes    65536 (64 KiB)    error
//	OUTBOX_DISABLE_NOTIFY              DisableNotify       false             -
//	OUTBOX_NOTIFY_INTERVAL_SECONDS     NotifyInterval      0.005             error
//	OUTBOX_UNAVAILABLE_BACKOFF_MAX_SECONDS UnavailableBackoffMax 1           error
//	OUTBOX_RELAY_TIMEOUT_SECONDS       RelayTimeout        3                 error
//	OUTBOX_LISTEN_DATABASE_URL         ListenURL           ""                LISTEN through the store's pool
//
// The *_SECONDS variables take a non-negative decimal number of seconds
// ("1.5", "300", "0.25") or a Go duration ("1500ms", "5m"). Booleans take
// the values strconv.ParseBool accepts (true, false, 1, 0, ...).
package config
