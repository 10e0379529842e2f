package watermilloutbox_test

import (
	"context"
	"fmt"
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

// The walk over the keys follows the database's order, which under a
// linguistic collation is not byte order ("a" < "B" in en-US, "B" < "a" in
// bytes): claims still go round every key once, and no claim returns a
// row twice.
func TestClaimsGoRoundUnderALinguisticCollation(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	var icu int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM pg_collation WHERE collname = 'en-US-x-icu'`).Scan(&icu))
	if icu == 0 {
		t.Skip("PostgreSQL built without ICU")
	}
	store := newStore(t, db, outbox.PostgreSQL, config.Config{})
	table := store.Config().Table
	for _, col := range []string{"topic", "partition_key"} {
		_, err := db.Exec(`ALTER TABLE ` + table + ` ALTER COLUMN ` + col + ` TYPE TEXT COLLATE "en-US-x-icu"`)
		require.NoError(t, err)
	}
	pub, err := outbox.NewPublisher(store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(t, err)
	keys := []string{"a", "B", "c", "D", "e", "F", "g", "H"}
	ctx := context.Background()
	for _, filter := range []relaystore.TopicFilter{{}, {Names: []string{"x", "Y"}}} {
		for _, ordered := range []bool{true, false} {
			for _, topic := range []string{"x", "Y"} {
				var msgs []*message.Message
				for i := range 3 * len(keys) {
					m := message.NewMessage(watermill.NewUUID(), []byte("{}"))
					m.Metadata.Set(outbox.PartitionKeyMetadataKey, keys[i%len(keys)])
					msgs = append(msgs, m)
				}
				require.NoError(t, pub.Publish(topic, msgs...))
			}
			taken := 0
			for range 100 {
				c, err := store.Claim(ctx, relaystore.ClaimRequest{Topics: filter, Limit: 3, Lease: time.Minute, Ordered: ordered})
				require.NoError(t, err)
				once := map[int64]bool{}
				for _, r := range c.Rows {
					require.False(t, once[r.ID], "row %d twice in one claim (ordered=%v, filter=%v)", r.ID, ordered, filter)
					once[r.ID] = true
				}
				taken += len(c.Rows)
				_, err = store.MarkPublished(ctx, c.Token, ids(c.Rows), false) // so each key moves on
				require.NoError(t, err)
			}
			require.Equal(t, 2*3*len(keys), taken, fmt.Sprintf("every row came round (ordered=%v, filter=%v)", ordered, filter))
		}
	}
}

func ids(rows []relaystore.Row) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}
