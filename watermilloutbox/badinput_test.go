package watermilloutbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// badInputDB is one database the bad-input tests run on.
type badInputDB struct {
	name    string
	dialect outbox.Dialect
	open    func(t testing.TB) *sql.DB
}

var badInputDBs = []badInputDB{
	{"postgres", outbox.PostgreSQL, func(t testing.TB) *sql.DB { return testenv.Postgres(t) }},
	{"mysql", outbox.MySQL, func(t testing.TB) *sql.DB { return testenv.MySQL(t) }},
	{"sqlite", outbox.SQLite, func(t testing.TB) *sql.DB { return testenv.SQLite(t) }},
}

func countRows(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table).Scan(&n))
	return n
}

// TestBadInputWritesNothingOnEveryDialect: every bad Publish is a clear
// error, returned before any SQL runs, on every dialect. Where the caller's
// transaction is live it is committed afterwards (it still can: no statement
// failed in it), so anything half-written would be kept; the table stays
// empty.
func TestBadInputWritesNothingOnEveryDialect(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := b.open(t)
			store := newStore(t, db, b.dialect, config.Config{MaxPayloadBytes: 8, MaxMetadataBytes: 1024})
			table := store.Config().Table
			pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
			require.NoError(t, err)
			good := func() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("ok")) }
			inCtx := func(m *message.Message, tx *sql.Tx) *message.Message {
				m.SetContext(outbox.ContextWithTx(ctx, tx))
				return m
			}
			// finished returns a transaction that is already committed or
			// rolled back.
			finished := func(commit bool) *sql.Tx {
				tx, err := db.Begin()
				require.NoError(t, err)
				if commit {
					require.NoError(t, tx.Commit())
				} else {
					require.NoError(t, tx.Rollback())
				}
				return tx
			}
			withMetadata := func(k, v string) *message.Message {
				m := good()
				m.Metadata.Set(k, v)
				return m
			}

			// A case with live set gets a live transaction, committed after
			// the call; the others make their own (finished) transactions,
			// which SQLite's single connection needs.
			type badCase struct {
				name string
				live bool
				call func(tx *sql.Tx) error
				is   error  // errors.Is target, or nil
				text string // error text, when is is nil
			}
			cases := []badCase{
				{"no transaction anywhere", false, func(*sql.Tx) error { return pub.Publish("t", good()) }, outbox.ErrNoTransaction, ""},
				{"nil transaction bound", false, func(*sql.Tx) error { return pub.WithTx(nil).Publish("t", good()) }, outbox.ErrNoTransaction, ""},
				{"nil transaction in the context", false, func(*sql.Tx) error { return pub.Publish("t", inCtx(good(), nil)) }, outbox.ErrNoTransaction, ""},
				{"committed transaction bound", false, func(*sql.Tx) error { return pub.WithTx(finished(true)).Publish("t", good()) }, sql.ErrTxDone, ""},
				{"committed transaction in the context", false, func(*sql.Tx) error { return pub.Publish("t", inCtx(good(), finished(true))) }, sql.ErrTxDone, ""},
				{"rolled-back transaction bound", false, func(*sql.Tx) error { return pub.WithTx(finished(false)).Publish("t", good()) }, sql.ErrTxDone, ""},
				{"rolled-back transaction in the context", false, func(*sql.Tx) error { return pub.Publish("t", inCtx(good(), finished(false))) }, sql.ErrTxDone, ""},
				{"payload over the limit", true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", message.NewMessage(watermill.NewUUID(), make([]byte, 9)))
				}, outbox.ErrPayloadTooLarge, ""},
				{"payload over the limit after good messages", true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), good(), message.NewMessage(watermill.NewUUID(), make([]byte, 9)))
				}, outbox.ErrPayloadTooLarge, ""},
				{"nil message after a good one", true, func(tx *sql.Tx) error { return pub.WithTx(tx).Publish("t", good(), nil) }, nil, "nil message"},
				{"message without UUID", true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", message.NewMessage("", []byte("x")))
				}, nil, "without UUID"},
				{"good message in the context, bad one without", true, func(tx *sql.Tx) error {
					return pub.Publish("t", inCtx(good(), tx), good())
				}, nil, "different transactions"},
			}
			if b.dialect != outbox.SQLite { // one connection: no second live transaction
				cases = append(cases, badCase{"different transactions in one call", true, func(tx *sql.Tx) error {
					other, err := db.Begin()
					require.NoError(t, err)
					defer other.Rollback() //nolint:errcheck // nothing to keep
					return pub.Publish("t", inCtx(good(), tx), inCtx(good(), other))
				}, nil, "different transactions"})
			}
			for _, k := range []string{"authorization", "Authorization", "AUTHORIZATION", " authorization ", "\tAuthorization"} {
				cases = append(cases, badCase{fmt.Sprintf("metadata %q", k), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), withMetadata(k, "Bearer secret"))
				}, outbox.ErrForbiddenMetadata, ""})
			}
			for _, k := range []string{"Proxy-Authorization", "cookie", "Set-Cookie", "X-Api-Key", "x_api_key", "authorization\x00", "\x00Cookie "} {
				cases = append(cases, badCase{fmt.Sprintf("metadata %q", k), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), withMetadata(k, "secret"))
				}, outbox.ErrForbiddenMetadata, ""})
			}
			for _, k := range []string{outbox.TopicMetadataKey, outbox.OutboxIDMetadataKey, outbox.AttemptMetadataKey, outbox.MessageUUIDMetadataKey} {
				cases = append(cases, badCase{fmt.Sprintf("reserved metadata %q", k), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), withMetadata(k, "1"))
				}, outbox.ErrReservedMetadata, ""})
			}
			for _, kv := range [][2]string{{"k\xff", "v"}, {"k", "v\xfe"}, {"k", "a\xc3"}} {
				cases = append(cases, badCase{fmt.Sprintf("metadata %q=%q", kv[0], kv[1]), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), withMetadata(kv[0], kv[1]))
				}, outbox.ErrInvalidMetadata, ""})
			}
			cases = append(cases, badCase{"metadata over the limit", true, func(tx *sql.Tx) error {
				return pub.WithTx(tx).Publish("t", good(), withMetadata("big", strings.Repeat("x", 1024)))
			}, outbox.ErrMetadataTooLarge, ""}, badCase{"many small metadata entries over the limit", true, func(tx *sql.Tx) error {
				m := good()
				for i := range 120 { // 120 * (2+1+8) > 1024
					m.Metadata.Set(fmt.Sprintf("%02x", i), "v")
				}
				return pub.WithTx(tx).Publish("t", m)
			}, outbox.ErrMetadataTooLarge, ""})
			for _, key := range []string{strings.Repeat("k", 256), strings.Repeat("é", 128), "a\x00b", "\xff", "ok\xc3"} {
				cases = append(cases, badCase{fmt.Sprintf("partition key %.20q", key), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish("t", good(), withMetadata(outbox.PartitionKeyMetadataKey, key))
				}, outbox.ErrInvalidPartitionKey, ""})
			}
			for _, topic := range []string{"", " ", "a b", " a", "a\t", "a\nb", "a\x00b", "a\x7fb", "\xff\xfe", "a\u00a0b", "a\u2028b", strings.Repeat("a", 256)} {
				cases = append(cases, badCase{fmt.Sprintf("topic %.20q", topic), true, func(tx *sql.Tx) error {
					return pub.WithTx(tx).Publish(topic, good())
				}, outbox.ErrInvalidTopic, ""})
			}

			// SQLite has one writer: the cases run one after the other.
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					var tx *sql.Tx
					if c.live {
						var err error
						tx, err = db.Begin()
						require.NoError(t, err)
						// A failed case must not leave SQLite's one connection taken.
						t.Cleanup(func() { _ = tx.Rollback() })
					}
					err := c.call(tx)
					if c.is != nil {
						require.ErrorIs(t, err, c.is)
					} else {
						require.ErrorContains(t, err, c.text)
					}
					if tx != nil {
						require.NoError(t, tx.Commit(), "no statement ran, so the transaction is intact")
					}
				})
			}

			t.Run("closed publisher", func(t *testing.T) {
				closing, err := outbox.NewPublisher(store, outbox.PublisherConfig{}, nil)
				require.NoError(t, err)
				tx, err := db.Begin()
				require.NoError(t, err)
				bound := closing.WithTx(tx)
				require.NoError(t, closing.Close())
				require.NoError(t, closing.Close(), "Close twice")
				require.ErrorIs(t, closing.Publish("t", inCtx(good(), tx)), outbox.ErrClosed)
				require.ErrorIs(t, bound.Publish("t", good()), outbox.ErrClosed, "a binding made before Close")
				require.ErrorIs(t, closing.WithTx(tx).Publish("t", good()), outbox.ErrClosed, "a binding made after Close")

				own := pub.WithTx(tx)
				require.NoError(t, own.Close())
				require.NoError(t, own.Close(), "Close twice")
				require.ErrorIs(t, own.Publish("t", good()), outbox.ErrClosed)
				require.NoError(t, tx.Commit())
			})

			require.Zero(t, countRows(t, db, table), "nothing written or half-written")
		})
	}
}

// TestPublishLimitsAcceptTheirBoundsExactly: a partition key of 255 bytes,
// metadata at MaxMetadataBytes, control characters, NUL and non-ASCII in
// metadata are accepted on every dialect, and read back byte for byte.
func TestPublishLimitsAcceptTheirBoundsExactly(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := b.open(t)
			const limit = 512
			store := newStore(t, db, b.dialect, config.Config{MaxMetadataBytes: limit})
			pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
			require.NoError(t, err)
			key := strings.Repeat("é", 127) + "k" // 255 bytes
			odd := "tab\there\nnul\x00end \u2028 \U0001F600"
			m := message.NewMessage(watermill.NewUUID(), []byte("x"))
			m.Metadata.Set(outbox.PartitionKeyMetadataKey, key)
			m.Metadata.Set("odd", odd)
			used := len(outbox.PartitionKeyMetadataKey) + len(key) + 8 + len("odd") + len(odd) + 8
			m.Metadata.Set("pad", strings.Repeat("p", limit-used-len("pad")-8)) // exactly at the limit
			require.NoError(t, pub.Publish("t", m))
			c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Minute, Ordered: true})
			require.NoError(t, err)
			require.Len(t, c.Rows, 1)
			require.Equal(t, key, c.Rows[0].PartitionKey)
			require.Equal(t, m.Metadata, c.Rows[0].Metadata)
		})
	}
}

// TestForbiddenMetadataKeysAreConfigurable: PublisherConfig's list
// replaces the default one (normalised the same way); an empty list
// forbids none.
func TestForbiddenMetadataKeysAreConfigurable(t *testing.T) {
	t.Parallel()
	store := newStore(t, testenv.SQLite(t), outbox.SQLite, config.Config{})
	msg := func(k string) *message.Message {
		m := message.NewMessage(watermill.NewUUID(), []byte("x"))
		m.Metadata.Set(k, "secret")
		return m
	}
	custom, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true,
		ForbiddenMetadataKeys: append(outbox.DefaultForbiddenMetadataKeys(), " X-Session-Token ")}, nil)
	require.NoError(t, err)
	require.ErrorIs(t, custom.Publish("t", msg("x_session_token")), outbox.ErrForbiddenMetadata)
	require.ErrorIs(t, custom.Publish("t", msg("Cookie")), outbox.ErrForbiddenMetadata)
	none, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true, ForbiddenMetadataKeys: []string{}}, nil)
	require.NoError(t, err)
	require.NoError(t, none.Publish("t", msg("authorization")))
}

// TestBadTableNamesTouchNothing: table names with quotes, semicolons,
// spaces or comments are refused by every entry point before any SQL runs,
// on every dialect: a canary table survives names built to drop it.
func TestBadTableNamesTouchNothing(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			db := b.open(t)
			canary := testenv.TableName(t)
			_, err := db.Exec(`CREATE TABLE ` + canary + ` (id INTEGER)`)
			require.NoError(t, err)
			t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + canary) })
			_, err = db.Exec(`INSERT INTO ` + canary + ` (id) VALUES (1)`)
			require.NoError(t, err)

			for _, name := range []string{
				canary + "; DROP TABLE " + canary,
				canary + `"; DROP TABLE ` + canary + `; --`,
				canary + "`; DROP TABLE " + canary + "; --",
				canary + "'; DROP TABLE " + canary + "; --",
				canary + " --",
				canary + "/**/",
				"a b",
				" " + canary,
				`"` + canary + `"`,
				"`" + canary + "`",
				"[" + canary + "]",
				canary + ".x.y",
				"." + canary,
				canary + ".",
				"1" + canary,
				canary + "-x",
				canary + "\x00",
				strings.Repeat("a", 49),
			} {
				_, err := outbox.DDL(b.dialect, name)
				require.ErrorIs(t, err, outbox.ErrInvalidTableName, "DDL %q", name)
				_, err = outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: b.dialect, Outbox: config.Config{Table: name}}, nil)
				require.ErrorIs(t, err, outbox.ErrInvalidTableName, "NewSQLStore %q", name)
				require.ErrorContains(t, err, "invalid config")
			}
			require.Equal(t, 1, countRows(t, db, canary), "the canary table is intact")
		})
	}
}
