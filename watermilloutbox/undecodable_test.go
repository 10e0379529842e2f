package watermilloutbox_test

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// TestUndecodableRowsAreDeadOthersClaimed: rows another program wrote
// that the relay cannot decode (metadata that is valid JSON but not an
// object of strings; on SQLite, a topic that is not UTF-8) are made dead
// with a last error saying why, on every dialect, and the claim returns the
// other rows, keyed ones behind a bad row of their key included; nothing
// stays leased but the rows returned.
func TestUndecodableRowsAreDeadOthersClaimed(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := b.open(t)
			store := newStore(t, db, b.dialect, config.Config{})
			table := store.Config().Table
			pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
			require.NoError(t, err)
			msg := func(key string) *message.Message {
				m := message.NewMessage(watermill.NewUUID(), []byte("x"))
				if key != "" {
					m.Metadata.Set(outbox.PartitionKeyMetadataKey, key)
				}
				return m
			}
			g1, b1, g2, b2, g3, g4 := msg(""), msg(""), msg("k"), msg("k"), msg("k"), msg("")
			all := []*message.Message{g1, b1, g2, b2, g3, g4}
			var bad3 *message.Message
			if b.dialect == outbox.SQLite {
				bad3 = msg("")
				all = append(all, bad3)
			}
			require.NoError(t, pub.Publish("t", all...))
			corrupt := func(m *message.Message, set string) {
				_, err := db.Exec(`UPDATE ` + table + ` SET ` + set + ` WHERE uuid = '` + m.UUID + `'`)
				require.NoError(t, err)
			}
			corrupt(b1, `metadata = '{"retries": 3}'`)
			corrupt(b2, `metadata = '[1, 2]'`)
			if bad3 != nil {
				corrupt(bad3, `topic = CAST(x'ff74' AS TEXT)`)
			}

			c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 100, Lease: time.Minute, Ordered: true})
			require.NoError(t, err, "one undecodable row must not fail the claim")
			var got []string
			for _, r := range c.Rows {
				got = append(got, r.UUID)
			}
			want := []string{g1.UUID, g2.UUID, g3.UUID, g4.UUID}
			sort.Strings(got)
			sort.Strings(want)
			require.Equal(t, want, got)

			dead, err := store.ListDead(ctx, outbox.DeadQuery{Limit: 10})
			require.NoError(t, err)
			why := map[string]string{}
			for _, d := range dead {
				why[d.UUID] = d.LastError
			}
			require.Len(t, why, len(all)-4)
			require.Contains(t, why[b1.UUID], "metadata is not a JSON object of strings")
			require.Contains(t, why[b2.UUID], "metadata is not a JSON object of strings")
			if bad3 != nil {
				require.Contains(t, why[bad3.UUID], "not valid UTF-8")
			}

			var leased int
			require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table+` WHERE claim_token IS NOT NULL`).Scan(&leased))
			require.Equal(t, 4, leased, "only the returned rows are leased")
		})
	}
}

// TestPipelinedClaimFailureLeavesNothingLeased: on PostgreSQL the take
// commits with the statement that takes, so a failure after it (the write
// giving back the rows the cut dropped, or making undecodable rows dead)
// must give the rows back: the claim's error leaves nothing leased, and the
// next claim takes every row at once, none of them reclaimed.
func TestPipelinedClaimFailureLeavesNothingLeased(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := badInputDBs[0].open(t)
	store := newStore(t, db, outbox.PostgreSQL, config.Config{})
	table := store.Config().Table
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	}
	failed := errors.New("lost the connection")
	outbox.SetTakeHook(store, func() error { return failed })
	_, err = store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.ErrorIs(t, err, failed)
	var leased int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+table+` WHERE claim_token IS NOT NULL`).Scan(&leased))
	require.Zero(t, leased, "a failed claim leaves no row leased")

	outbox.SetTakeHook(store, nil)
	c, err := store.Claim(ctx, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.NoError(t, err)
	require.Len(t, c.Rows, 3)
	for _, r := range c.Rows {
		require.False(t, r.Reclaimed, "given back, not left to expire")
	}
}
