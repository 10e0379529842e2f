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
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// adminTable is one test's table with rows in it, on one dialect.
type adminTable struct {
	t     *testing.T
	db    *sql.DB
	store *outbox.SQLStore
	table string
}

func newAdminTable(t *testing.T, b badInputDB) *adminTable {
	t.Helper()
	db := b.open(t)
	store := newStore(t, db, b.dialect, config.Config{})
	return &adminTable{t: t, db: db, store: store, table: store.Config().Table}
}

// insert commits n rows of topic, keyed when key is set, and returns their
// ids.
func (a *adminTable) insert(topic, key string, n int) []int64 {
	a.t.Helper()
	pub, err := outbox.NewPublisher(a.store, outbox.PublisherConfig{AutoCommit: true}, nil)
	require.NoError(a.t, err)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprint(i)))
		if key != "" {
			msgs[i].Metadata.Set(outbox.PartitionKeyMetadataKey, key)
		}
	}
	require.NoError(a.t, pub.Publish(topic, msgs...))
	rows, err := a.db.Query(`SELECT id FROM ` + a.table + ` WHERE topic = '` + topic + `' ORDER BY id DESC`)
	require.NoError(a.t, err)
	defer rows.Close()
	ids := make([]int64, n)
	for i := n - 1; i >= 0 && rows.Next(); i-- {
		require.NoError(a.t, rows.Scan(&ids[i]))
	}
	require.NoError(a.t, rows.Err())
	return ids
}

// kill makes the rows of topic dead as the relay leaves them: attempts
// used up, last_error set, still marked waiting from their last backoff.
func (a *adminTable) kill(topic string) {
	a.t.Helper()
	_, err := a.db.Exec(`UPDATE ` + a.table + ` SET state = 'dead', attempts = 5, last_error = 'boom', waiting = 1 WHERE topic = '` + topic + `'`)
	require.NoError(a.t, err)
}

// states counts the rows of topic by state.
func (a *adminTable) states(topic string) map[string]int {
	a.t.Helper()
	rows, err := a.db.Query(`SELECT state, count(*) FROM ` + a.table + ` WHERE topic = '` + topic + `' GROUP BY state`)
	require.NoError(a.t, err)
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		require.NoError(a.t, rows.Scan(&state, &n))
		out[state] = n
	}
	require.NoError(a.t, rows.Err())
	return out
}

func (a *adminTable) count(where string) int {
	a.t.Helper()
	var n int
	require.NoError(a.t, a.db.QueryRow(`SELECT count(*) FROM `+a.table+` WHERE `+where).Scan(&n))
	return n
}

// TestRequeueTopicMakesOnlyThatTopicPending: the dead rows of one topic
// become pending, due, with a fresh budget and out of the backoff indexes
// (a claim takes them at once); the other topic's dead rows, and the
// topic's rows that were not dead, are untouched.
func TestRequeueTopicMakesOnlyThatTopicPending(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := newAdminTable(t, b)
			a.insert("orders", "k1", 3)
			a.insert("orders", "", 2)
			a.kill("orders")
			a.insert("payments", "", 4)
			a.kill("payments")
			a.insert("orders", "", 1) // pending, not dead

			n, err := a.store.CountDead(ctx, "orders")
			require.NoError(t, err)
			require.Equal(t, 5, n)
			n, err = a.store.CountDead(ctx, "")
			require.NoError(t, err)
			require.Equal(t, 9, n)

			n, err = a.store.RequeueTopic(ctx, "orders")
			require.NoError(t, err)
			require.Equal(t, 5, n)
			require.Equal(t, map[string]int{"pending": 6}, a.states("orders"))
			require.Equal(t, map[string]int{"dead": 4}, a.states("payments"))
			require.Equal(t, 0, a.count(`topic = 'orders' AND (attempts <> 0 OR waiting <> 0 OR claim_token IS NOT NULL)`))

			claimed, err := a.store.Claim(ctx, relaystore.ClaimRequest{Limit: 100, Lease: time.Minute, Ordered: true})
			require.NoError(t, err)
			require.Len(t, claimed.Rows, 6, "requeued rows are due at once")
			for _, r := range claimed.Rows {
				require.Equal(t, "orders", r.Topic)
				require.Zero(t, r.Attempts)
			}

			n, err = a.store.RequeueTopic(ctx, "orders")
			require.NoError(t, err)
			require.Zero(t, n, "nothing dead is left in the topic")
		})
	}
}

// TestDeadAdminWorksInBatches: requeue and purge of every topic touch each
// dead row once, in statements of DeadBatchSize rows; on PostgreSQL each
// batch is its own transaction (the rows' xmin tells).
func TestDeadAdminWorksInBatches(t *testing.T) {
	t.Parallel()
	n := 2*outbox.DeadBatchSize + 500
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := newAdminTable(t, b)
			a.insert("big", "", n)
			a.insert("small", "k", 7)
			a.kill("big")
			a.kill("small")
			a.insert("big", "", 3) // pending

			got, err := a.store.RequeueAll(ctx)
			require.NoError(t, err)
			require.Equal(t, n+7, got)
			require.Equal(t, map[string]int{"pending": n + 3}, a.states("big"))
			require.Equal(t, map[string]int{"pending": 7}, a.states("small"))
			if b.dialect == outbox.PostgreSQL {
				var txs int
				require.NoError(t, a.db.QueryRow(`SELECT count(DISTINCT xmin::text) FROM `+a.table+` WHERE topic = 'big' AND attempts = 0 AND last_error = 'boom'`).Scan(&txs))
				require.Equal(t, 3, txs, "%d rows in batches of %d", n, outbox.DeadBatchSize)
			}

			a.kill("big")
			got, err = a.store.PurgeDeadTopic(ctx, "big")
			require.NoError(t, err)
			require.Equal(t, n+3, got)
			require.Equal(t, map[string]int{}, a.states("big"))
			require.Equal(t, map[string]int{"pending": 7}, a.states("small"), "the other topic is untouched")

			a.kill("small")
			got, err = a.store.PurgeAllDead(ctx)
			require.NoError(t, err)
			require.Equal(t, 7, got)
			require.Zero(t, a.count(`1 = 1`))
		})
	}
}

// TestDeadAdminByID: Requeue and PurgeDead by id touch only dead rows among
// the ids, however many ids are given; ListDead lists the dead among ids.
func TestDeadAdminByID(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := newAdminTable(t, b)
			dead := a.insert("orders", "", 4)
			a.kill("orders")
			live := a.insert("orders", "", 1)

			rows, err := a.store.ListDead(ctx, outbox.DeadQuery{IDs: []int64{dead[1], dead[3], live[0], 1 << 40}})
			require.NoError(t, err)
			require.Len(t, rows, 2)
			require.Equal(t, dead[1], rows[0].ID)
			require.Equal(t, dead[3], rows[1].ID)
			require.Equal(t, "boom", rows[0].LastError)
			require.Equal(t, 5, rows[0].Attempts)

			rows, err = a.store.ListDead(ctx, outbox.DeadQuery{IDs: []int64{}})
			require.NoError(t, err)
			require.Empty(t, rows, "an empty id list lists nothing")

			// More ids than one batch: the dead among them are requeued.
			ids := []int64{dead[0], live[0]}
			for i := range int64(2 * outbox.DeadBatchSize) {
				ids = append(ids, 1<<40+i)
			}
			ids = append(ids, dead[2])
			n, err := a.store.Requeue(ctx, ids...)
			require.NoError(t, err)
			require.Equal(t, 2, n)
			require.Equal(t, map[string]int{"pending": 3, "dead": 2}, a.states("orders"))

			n, err = a.store.PurgeDead(ctx, dead[1], live[0])
			require.NoError(t, err)
			require.Equal(t, 1, n, "the live row is not dead: kept")
			require.Equal(t, map[string]int{"pending": 3, "dead": 1}, a.states("orders"))
		})
	}
}

// TestListDeadPagesByTopic: the cursor walks one topic's dead rows in id
// order, page by page, and no other topic's.
func TestListDeadPagesByTopic(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := newAdminTable(t, b)
			want := a.insert("orders", "k", 5)
			a.insert("payments", "", 3)
			a.kill("orders")
			a.kill("payments")
			var got []int64
			for after := int64(0); ; {
				page, err := a.store.ListDead(ctx, outbox.DeadQuery{Topic: "orders", AfterID: after, Limit: 2})
				require.NoError(t, err)
				for _, r := range page {
					require.Equal(t, "orders", r.Topic)
					require.Equal(t, "k", r.PartitionKey)
					got = append(got, r.ID)
				}
				if len(page) < 2 {
					break
				}
				after = page[len(page)-1].ID
			}
			require.Equal(t, want, got)
		})
	}
}

// TestDeadAdminBadInput: each bad argument is an error naming it, and
// nothing changes.
func TestDeadAdminBadInput(t *testing.T) {
	t.Parallel()
	for _, b := range badInputDBs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := newAdminTable(t, b)
			a.insert("orders", "", 3)
			a.kill("orders")

			for _, topic := range []string{"", "a b", "x\ny", strings.Repeat("t", 256), "\xff"} {
				_, err := a.store.RequeueTopic(ctx, topic)
				require.ErrorIs(t, err, outbox.ErrInvalidTopic, "%q", topic)
				_, err = a.store.PurgeDeadTopic(ctx, topic)
				require.ErrorIs(t, err, outbox.ErrInvalidTopic, "%q", topic)
				if topic != "" {
					_, err = a.store.CountDead(ctx, topic)
					require.ErrorIs(t, err, outbox.ErrInvalidTopic, "%q", topic)
					_, err = a.store.ListDead(ctx, outbox.DeadQuery{Topic: topic})
					require.ErrorIs(t, err, outbox.ErrInvalidTopic, "%q", topic)
				}
			}
			for _, id := range []int64{0, -1} {
				_, err := a.store.Requeue(ctx, 1, id)
				require.ErrorContains(t, err, fmt.Sprintf("invalid id %d", id))
				_, err = a.store.PurgeDead(ctx, id)
				require.ErrorContains(t, err, fmt.Sprintf("invalid id %d", id))
			}
			for _, tc := range []struct {
				q    outbox.DeadQuery
				want string
			}{
				{outbox.DeadQuery{Limit: -1}, "Limit: must be between 1 and 10000, got -1"},
				{outbox.DeadQuery{Limit: config.MaxBatchSize + 1}, "Limit:"},
				{outbox.DeadQuery{AfterID: -1}, "AfterID: must not be negative"},
				{outbox.DeadQuery{IDs: []int64{3, 0}}, "IDs: invalid id 0"},
				{outbox.DeadQuery{IDs: make([]int64, config.MaxBatchSize+1)}, "IDs: at most 10000 ids"},
			} {
				_, err := a.store.ListDead(ctx, tc.q)
				require.ErrorContains(t, err, tc.want)
			}
			require.Equal(t, map[string]int{"dead": 3}, a.states("orders"), "nothing changed")
		})
	}
}
