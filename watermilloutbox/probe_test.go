package watermilloutbox_test

import (
	"context"
	"database/sql"
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

// TestDialectMismatchIsNamed: a dialect on the wrong database fails at
// Migrate, the first Claim and the first Publish with ErrDialectMismatch,
// naming the dialect and the driver, instead of a syntax error at the first
// INSERT; nothing is created.
func TestDialectMismatchIsNamed(t *testing.T) {
	t.Parallel()
	dbs := map[outbox.Dialect]func(t testing.TB) *sql.DB{}
	for _, b := range badInputDBs {
		dbs[b.dialect] = b.open
	}
	for _, c := range []struct {
		dialect outbox.Dialect
		on      outbox.Dialect
		driver  string
	}{
		{outbox.PostgreSQL, outbox.MySQL, "mysql.MySQLDriver"},
		{outbox.MySQL, outbox.PostgreSQL, "stdlib.Driver"},
		{outbox.SQLite, outbox.PostgreSQL, "stdlib.Driver"},
		{outbox.PostgreSQL, outbox.SQLite, "sqlite.Driver"},
		{outbox.MySQL, outbox.SQLite, "sqlite.Driver"},
	} {
		t.Run(string(c.dialect)+" on "+string(c.on), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			db := dbs[c.on](t)
			table := testenv.TableName(t)
			store, err := outbox.NewSQLStore(db, outbox.SQLStoreConfig{Dialect: c.dialect, Outbox: config.Config{Table: table}}, nil)
			require.NoError(t, err)

			err = store.Migrate(ctx)
			require.ErrorIs(t, err, outbox.ErrDialectMismatch)
			require.ErrorContains(t, err, "dialect "+string(c.dialect))
			require.ErrorContains(t, err, c.driver)

			_, err = store.Claim(ctx, relaystore.ClaimRequest{Limit: 1, Lease: time.Minute})
			require.ErrorIs(t, err, outbox.ErrDialectMismatch)

			pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
			require.NoError(t, err)
			err = pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x")))
			require.ErrorIs(t, err, outbox.ErrDialectMismatch)

			var n int
			err = db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n)
			require.Error(t, err, "no table was created")
		})
	}
}
