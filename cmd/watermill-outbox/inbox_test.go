package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

func TestCLIInbox(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite", "file:"+path+"?"+outbox.SQLiteConnParams)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	for _, consumer := range []string{"billing", "shipping"} {
		in, err := inbox.New(db, inbox.Config{Consumer: consumer, Dialect: outbox.SQLite}, nil)
		require.NoError(t, err)
		require.NoError(t, in.Migrate(ctx))
		for _, uuid := range []string{"m1", "m2"} {
			_, err := in.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })(message.NewMessage(uuid, nil))
			require.NoError(t, err)
		}
	}
	// billing's m1 is ten days old.
	_, err = db.ExecContext(ctx, `UPDATE watermill_inbox SET processed_at = processed_at - 864000000000 WHERE consumer = 'billing' AND message_uuid = 'm1'`)
	require.NoError(t, err)

	cli := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(ctx, append(args, "--database-url", "sqlite:"+path), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, out, errOut := cli("inbox", "stats", "--json")
	require.Equal(t, 0, code, errOut)
	var st inboxStatsJSON
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Len(t, st.Consumers, 2)
	require.Equal(t, "billing", st.Consumers[0].Consumer)
	require.EqualValues(t, 2, st.Consumers[0].Records)
	require.Greater(t, st.Consumers[0].OldestSeconds, float64(9*86400))

	code, out, errOut = cli("inbox", "purge")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "consumer billing: purged 1 records")
	require.Contains(t, out, "consumer shipping: purged 0 records")

	code, out, errOut = cli("inbox", "stats")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `billing\s+1\s`, out)
	require.Regexp(t, `shipping\s+2\s`, out)

	code, _, errOut = cli("inbox", "purge", "--inbox-table", "x;y")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "--inbox-table")
	code, _, errOut = cli("inbox", "frobnicate")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "want stats or purge")
	code, _, errOut = cli("inbox", "stats", "--inbox-table", "missing")
	require.Equal(t, exitFailure, code)
	require.Contains(t, errOut, "inbox.Migrate")
}
