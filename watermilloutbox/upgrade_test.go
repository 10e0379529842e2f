package watermilloutbox_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// earlierDDL is the table as the previous version created it ({T} is its
// name): no waiting column, and the claim indexes pending_idx and key_idx.
var earlierDDL = map[outbox.Dialect][]string{
	outbox.PostgreSQL: {
		`CREATE TABLE {T} (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid          TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition_key TEXT,
    payload       BYTEA       NOT NULL,
    metadata      JSON        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    claim_token   TEXT,
    claimed_until TIMESTAMPTZ,
    published_at  TIMESTAMPTZ,
    state         TEXT        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT
) WITH (fillfactor = 50)`,
		`CREATE INDEX {T}_pending_idx ON {T} (id) WHERE state = 'pending'`,
		`CREATE INDEX {T}_key_idx ON {T} (topic, partition_key, id) WHERE state = 'pending' AND partition_key IS NOT NULL`,
		`CREATE INDEX {T}_published_idx ON {T} (published_at) WHERE state = 'published'`,
	},
	outbox.MySQL: {
		"CREATE TABLE {T} (\n" + `    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid          VARCHAR(255) NOT NULL,
    topic         VARCHAR(255) NOT NULL,
    partition_key VARCHAR(255) NULL,
    payload       LONGBLOB     NOT NULL,
    metadata      LONGTEXT     NOT NULL,
    created_at    DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    available_at  DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    attempts      INT          NOT NULL DEFAULT 0,
    claim_token   CHAR(36)     NULL,
    claimed_until DATETIME(6)  NULL,
    published_at  DATETIME(6)  NULL,
    state         VARCHAR(16)  NOT NULL DEFAULT 'pending',
    last_error    TEXT         NULL,
    KEY {T}_pending_idx (state, id),
    KEY {T}_key_idx (topic, partition_key, state, id),
    KEY {T}_published_idx (state, published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
	},
	outbox.SQLite: {
		`CREATE TABLE {T} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid          TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition_key TEXT,
    payload       BLOB    NOT NULL,
    metadata      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    available_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    attempts      INTEGER NOT NULL DEFAULT 0,
    claim_token   TEXT,
    claimed_until INTEGER,
    published_at  INTEGER,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    last_error    TEXT
)`,
		`CREATE INDEX {T}_pending_idx ON {T} (id) WHERE state = 'pending'`,
		`CREATE INDEX {T}_key_idx ON {T} (topic, partition_key, id) WHERE state = 'pending' AND partition_key IS NOT NULL`,
		`CREATE INDEX {T}_published_idx ON {T} (published_at) WHERE state = 'published'`,
	},
}

// Migrate brings a table the previous version created up to date, rows
// and all: a row that was backing off is waiting afterwards (out of the
// claim's indexes, and not claimed before it is due), the others are
// claimed in order, and the indexes the claim no longer reads are gone.
func TestMigrateUpgradesAnEarlierTable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		dialect outbox.Dialect
		open    func(testing.TB) *sql.DB
		later   string // an hour from now, in the dialect's time
		indexes string // lists the table's index names
	}{
		{"postgres", outbox.PostgreSQL, testenv.Postgres, "now() + interval '1 hour'",
			`SELECT indexname FROM pg_indexes WHERE tablename = $1`},
		{"mysql", outbox.MySQL, testenv.MySQL, "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR",
			`SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`},
		{"sqlite", outbox.SQLite, testenv.SQLite, "CAST(unixepoch('subsec') * 1000000 AS INTEGER) + 3600000000",
			`SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := tc.open(t)
			ctx := context.Background()
			table := testenv.TableName(t)
			t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table) })
			t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + table + `_relays`) })
			exec := func(q string) {
				t.Helper()
				_, err := db.Exec(q)
				require.NoError(t, err, q)
			}
			for _, q := range earlierDDL[tc.dialect] {
				exec(strings.ReplaceAll(q, "{T}", table))
			}
			later := `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata, attempts, state, available_at) VALUES `
			now := `INSERT INTO ` + table + ` (uuid, topic, partition_key, payload, metadata, attempts, state) VALUES `
			exec(later + `('u1', 't', 'k', 'p', '{}', 1, 'pending', ` + tc.later + `)`) // backing off
			exec(later + `('u2', 't', 'k', 'p', '{}', 1, 'pending', ` + tc.later + `)`) // so is the next of its key
			exec(later + `('u3', 't', NULL, 'p', '{}', 5, 'dead', ` + tc.later + `)`)
			exec(now + `('u4', 't', 'j', 'p', '{}', 0, 'pending')`)
			exec(now + `('u5', 't', NULL, 'p', '{}', 0, 'pending')`)

			store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: tc.dialect, Outbox: config.Config{Table: table}}, nil)
			require.NoError(t, err)
			require.NoError(t, store.Migrate(ctx))
			require.NoError(t, store.Migrate(ctx), "and again: idempotent")

			var waiting int
			require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table+` WHERE waiting = 1`).Scan(&waiting))
			require.Equal(t, 2, waiting, "the rows backing off are marked waiting")
			names := map[string]bool{}
			rows, err := db.Query(tc.indexes, table)
			require.NoError(t, err)
			for rows.Next() {
				var name string
				require.NoError(t, rows.Scan(&name))
				names[strings.TrimPrefix(name, table+"_")] = true
			}
			require.NoError(t, rows.Err())
			rows.Close()
			require.False(t, names["pending_idx"] || names["key_idx"], "the old claim indexes are dropped: %v", names)
			require.True(t, names["unkeyed_idx"] && names["keyed_idx"] && names["waiting_idx"] && names["backlog_idx"], "%v", names)

			// The relay registry and claimed_by are there: a registered
			// relay's claim names it.
			_, err = store.Beat(ctx, "relay-1", time.Minute)
			require.NoError(t, err)
			c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Minute, Ordered: true, Relay: "relay-1"})
			require.NoError(t, err)
			var held int
			require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table+` WHERE claimed_by = 'relay-1'`).Scan(&held))
			require.Equal(t, 2, held, "claims record their relay")
			var uuids []string
			for _, r := range c.Rows {
				uuids = append(uuids, r.UUID)
			}
			require.Equal(t, []string{"u4", "u5"}, uuids, "the due rows; key k waits for its head")
			st, err := store.Stats(ctx)
			require.NoError(t, err)
			require.Len(t, st.Topics, 1)
			require.Equal(t, [4]int{0, 2, 2, 1}, [4]int{st.Topics[0].Pending, st.Topics[0].Waiting, st.Topics[0].Leased, st.Topics[0].Dead})
		})
	}
}
