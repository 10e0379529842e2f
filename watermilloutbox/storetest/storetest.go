// Package storetest is the contract kit of relaystore.Store: the tests
// every store the relay runs on must pass (claims, fencing, leases, the
// per-key ordering filter, strict order through a dead head, failures,
// dead rows, releases, renewals, the retention purge, topic filters,
// Listen, and, for a store that implements relaystore.RelayRegistry,
// relay liveness), and, when the harness gives them, the operator's reads
// and writes (ListDead, Requeue, Stats, BlockedKeys, RequeueKey, SkipKey).
// watermilloutbox.SQLStore runs it for PostgreSQL, MySQL/MariaDB and
// SQLite; run it against a store of your own:
//
//	func TestMyStore(t *testing.T) {
//		storetest.Run(t, storetest.Harness{
//			New: func(t *testing.T) (relaystore.Store, storetest.Insert) {
//				s := newMyStore(t) // a fresh, empty outbox
//				return s, func(t *testing.T, topic string, msgs ...*message.Message) { s.insert(t, topic, msgs) }
//			},
//		})
//	}
//
// The kit waits for real leases to expire (of one second), so it takes a
// few seconds; its tests run in parallel, each on a store of its own.
package storetest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// Insert commits msgs to topic in the store under test, as a publisher
// would: in one transaction, in order, with the partition key taken from
// watermilloutbox.PartitionKeyMetadataKey.
type Insert func(t *testing.T, topic string, msgs ...*message.Message)

// Harness is what the kit needs of the store under test. Only New is
// required; the other fields test the optional operator interface, and the
// tests that need a nil one are skipped.
type Harness struct {
	// New returns a fresh, empty store for one test, and how to insert
	// rows into it. It is called once per test, from parallel tests.
	New func(t *testing.T) (relaystore.Store, Insert)

	// ListDead lists the store's dead rows (SQLStore.ListDead).
	ListDead func(ctx context.Context, s relaystore.Store) ([]outbox.DeadRow, error)
	// Requeue makes dead rows pending again with a fresh budget
	// (SQLStore.Requeue).
	Requeue func(ctx context.Context, s relaystore.Store, ids ...int64) (int, error)
	// Stats reads the store's state per topic (SQLStore.Stats).
	Stats func(ctx context.Context, s relaystore.Store) (outbox.Stats, error)
	// BlockedKeys lists the keys held back (SQLStore.BlockedKeys).
	BlockedKeys func(ctx context.Context, s relaystore.Store, q outbox.BlockedQuery) ([]outbox.BlockedKey, error)
	// RequeueKey and SkipKey retry or drop the head holding a key back
	// (SQLStore.RequeueKey, SkipKey).
	RequeueKey, SkipKey func(ctx context.Context, s relaystore.Store, topic, key string) (outbox.KeyAction, error)
	// NewStrict is New for a store made with config.Config.StrictOrder.
	NewStrict func(t *testing.T) (relaystore.Store, Insert)
}

// Run runs every test of the kit against h's stores.
func Run(t *testing.T, h Harness) {
	t.Helper()
	require.NotNil(t, h.New, "Harness.New is required")
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"ClaimReturnsRowsIntactInIDOrder", testClaimIntact},
		{"ClaimTakesNothingLeased", testClaimLeased},
		{"StaleTokenWritesChangeNothing", testFencing},
		{"ExpiredLeaseIsClaimedAgain", testLeaseExpiry},
		{"RenewKeepsTheLease", testRenew},
		{"RecordFailureReleasesAtOnceAndDelays", testRecordFailure},
		{"ReleaseChargesNothing", testRelease},
		{"MarkPublishedDeletesOrKeeps", testMarkPublished},
		{"MarkDeadIsNeverClaimedAgain", testMarkDead},
		{"RequeueGivesDeadRowsAFreshBudget", testRequeue},
		{"OrderedClaimHoldsBackOnlyTheBlockedKey", testOrderedBlocked},
		{"OrderedClaimTakesKeysWhole", testOrderedPrefix},
		{"OrderedClaimPassesAStuckKey", testStuckKey},
		{"WaitingRowsReturnWhenDue", testWaiting},
		{"ClaimSaysWhenMoreMayBeDue", testMore},
		{"StatsCountEachState", testStats},
		{"StrictOrderDeadHeadHoldsItsKey", testStrictClaim},
		{"BlockedKeysNameTheHead", testBlockedKeys},
		{"BlockedKeysPage", testBlockedPaging},
		{"StrictKeyRequeueKeepsOrder", testStrictRequeue},
		{"StrictKeySkipLetsTheKeyGo", testStrictSkip},
		{"RequeueKeyRetriesAWaitingHeadNow", testRequeueWaiting},
		{"TopicFilter", testTopicFilter},
		{"ListenAnswers", testListen},
		{"MaintainAnswers", testMaintain},
		{"ConfigIsValid", testConfig},
		{"LiveRelayKeepsItsLease", testLiveRelayKeepsItsLease},
		{"GoneRelayIsTakenOver", testGoneRelayIsTakenOver},
		{"ExpiredRelayIsTakenOver", testExpiredRelayIsTakenOver},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, h)
		})
	}
}

// ctx bounds each test.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// messages makes n messages numbered in their "seq" metadata, the i-th
// with partition key keyOf(i) ("" or nil keyOf: none).
func messages(n int, keyOf func(i int) string) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"n":`+strconv.Itoa(i)+`}`))
		msgs[i].Metadata.Set("seq", strconv.Itoa(i))
		if keyOf != nil {
			if k := keyOf(i); k != "" {
				msgs[i].Metadata.Set(outbox.PartitionKeyMetadataKey, k)
			}
		}
	}
	return msgs
}

func ids(rows []relaystore.Row) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

func claim(t *testing.T, s relaystore.Store, req relaystore.ClaimRequest) (string, []relaystore.Row) {
	t.Helper()
	c, err := s.Claim(ctx(t), req)
	require.NoError(t, err)
	token, rows := c.Token, c.Rows
	for i := 1; i < len(rows); i++ {
		require.Less(t, rows[i-1].ID, rows[i].ID, "rows come back in id order")
	}
	return token, rows
}

// eventually claims with req until cond holds for the rows claimed, or
// fails t: for leases and backoffs, which pass on the database's clock.
func eventually(t *testing.T, s relaystore.Store, req relaystore.ClaimRequest, what string, cond func([]relaystore.Row) bool) (string, []relaystore.Row) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		token, rows := claim(t, s, req)
		if cond(rows) {
			return token, rows
		}
		if len(rows) > 0 { // give them back for the next look
			_, err := s.Release(ctx(t), token, ids(rows))
			require.NoError(t, err)
		}
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func n(want int) func([]relaystore.Row) bool {
	return func(r []relaystore.Row) bool { return len(r) == want }
}

var (
	lease = time.Minute
	all   = relaystore.ClaimRequest{Limit: 100, Lease: lease}
)

func testClaimIntact(t *testing.T, h Harness) {
	s, insert := h.New(t)
	msgs := messages(3, func(i int) string { return []string{"k", "", "k"}[i] })
	msgs[1].Metadata.Set("header", "value")
	msgs[2].Payload = []byte{0, 1, 2, 255}
	insert(t, "orders", msgs...)
	_, rows := claim(t, s, all)
	require.Len(t, rows, 3)
	for i, r := range rows {
		m := msgs[i]
		require.Equal(t, m.UUID, r.UUID, "id order is write order")
		require.Equal(t, "orders", r.Topic)
		require.Equal(t, []byte(m.Payload), r.Payload)
		require.Equal(t, m.Metadata, r.Metadata)
		require.Equal(t, m.Metadata.Get(outbox.PartitionKeyMetadataKey), r.PartitionKey)
		require.Zero(t, r.Attempts)
		require.False(t, r.Reclaimed)
		require.WithinDuration(t, time.Now(), r.CreatedAt, time.Minute, "created at, by the database's clock")
	}
}

func testClaimLeased(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(5, nil)...)
	_, first := claim(t, s, relaystore.ClaimRequest{Limit: 3, Lease: lease})
	require.Len(t, first, 3, "at most Limit rows")
	_, rest := claim(t, s, all)
	require.Len(t, rest, 2, "only the rows nobody holds")
	_, none := claim(t, s, all)
	require.Empty(t, none)
	_, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 0, Lease: lease})
	require.Error(t, err, "Limit 0")
	_, err = s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 1})
	require.Error(t, err, "no lease")
}

func testFencing(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(3, nil)...)
	stale, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Second})
	require.Len(t, rows, 3)
	fresh, again := eventually(t, s, relaystore.ClaimRequest{Limit: 10, Lease: lease}, "the lease to expire", n(3))
	require.NotEqual(t, stale, fresh)
	c := ctx(t)
	for name, write := range map[string]func() (int, error){
		"MarkPublished": func() (int, error) { return s.MarkPublished(c, stale, ids(rows), false) },
		"RecordFailure": func() (int, error) { return s.RecordFailure(c, stale, rows[0].ID, "x", 0) },
		"MarkDead":      func() (int, error) { return s.MarkDead(c, stale, rows[1].ID, "x") },
		"Release":       func() (int, error) { return s.Release(c, stale, ids(rows)) },
		"Renew":         func() (int, error) { return s.Renew(c, stale, ids(rows), time.Hour) },
	} {
		changed, err := write()
		require.NoError(t, err, name)
		require.Zero(t, changed, "%s with a stale token changes nothing", name)
	}
	changed, err := s.MarkPublished(c, "", ids(again), false)
	require.NoError(t, err)
	require.Zero(t, changed, "the empty token fences too")
	changed, err = s.MarkPublished(c, fresh, ids(again), false)
	require.NoError(t, err)
	require.Equal(t, 3, changed, "the live token writes")
}

func testLeaseExpiry(t *testing.T, h Harness) {
	s, insert := h.New(t)
	msgs := messages(4, func(int) string { return "same-key" })
	insert(t, "t", msgs...)
	_, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Second, Ordered: true})
	require.Len(t, rows, 4, "one key's rows are claimed together")
	// The claimer "crashed". Its rows come back once the lease expired, in
	// order.
	_, again := eventually(t, s, relaystore.ClaimRequest{Limit: 10, Lease: lease, Ordered: true}, "the lease to expire", n(4))
	for i, r := range again {
		require.Equal(t, msgs[i].UUID, r.UUID)
		require.Zero(t, r.Attempts, "a lost lease charges nothing")
		require.True(t, r.Reclaimed, "taken over from an expired claim")
	}
}

func testRenew(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(2, nil)...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Second})
	require.Len(t, rows, 2)
	renewed, err := s.Renew(ctx(t), token, ids(rows), time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, renewed)
	// The second row's lease runs out; the first, renewed again, does not.
	renewed, err = s.Renew(ctx(t), token, ids(rows[1:]), time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, renewed)
	_, again := eventually(t, s, all, "the shorter lease to expire", n(1))
	require.Equal(t, rows[1].ID, again[0].ID)
}

func testRecordFailure(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(2, nil)...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour})
	require.Len(t, rows, 2)
	c := ctx(t)
	changed, err := s.RecordFailure(c, token, rows[0].ID, "boom", 0)
	require.NoError(t, err)
	require.Equal(t, 1, changed)
	changed, err = s.RecordFailure(c, token, rows[1].ID, "later", time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, changed)
	_, again := claim(t, s, all)
	require.Len(t, again, 1, "claimable again at once despite the hour-long lease; the other waits out its delay")
	require.Equal(t, rows[0].ID, again[0].ID)
	require.Equal(t, 1, again[0].Attempts, "one attempt charged")
}

func testRelease(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(3, nil)...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour})
	changed, err := s.Release(ctx(t), token, ids(rows[:2]))
	require.NoError(t, err)
	require.Equal(t, 2, changed)
	_, again := claim(t, s, all)
	require.Equal(t, ids(rows[:2]), ids(again), "released rows are due at once; the third is still held")
	for _, r := range again {
		require.Zero(t, r.Attempts, "a release charges nothing")
		require.False(t, r.Reclaimed, "a release gives the claim back")
	}
}

func testMarkPublished(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(5, nil)...)
	token, rows := claim(t, s, all)
	c := ctx(t)
	changed, err := s.MarkPublished(c, token, ids(rows[:2]), false)
	require.NoError(t, err)
	require.Equal(t, 2, changed)
	changed, err = s.MarkPublished(c, token, ids(rows[2:]), true)
	require.NoError(t, err)
	require.Equal(t, 3, changed)
	changed, err = s.MarkPublished(c, token, nil, false)
	require.NoError(t, err)
	require.Zero(t, changed)
	_, none := eventually(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Second}, "nothing to claim", n(0))
	require.Empty(t, none, "published rows are never claimed")
	purged, err := s.PurgePublished(c, 0, 2)
	require.NoError(t, err)
	require.Equal(t, 2, purged, "the purge works in bounded batches")
	purged, err = s.PurgePublished(c, time.Hour, 10)
	require.NoError(t, err)
	require.Zero(t, purged, "rows younger than the retention stay")
	purged, err = s.PurgePublished(c, 0, 10)
	require.NoError(t, err)
	require.Equal(t, 1, purged)
}

func testMarkDead(t *testing.T, h Harness) {
	s, insert := h.New(t)
	msgs := messages(3, func(i int) string { return "k" })
	insert(t, "t", msgs...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
	require.Len(t, rows, 1)
	changed, err := s.MarkDead(ctx(t), token, rows[0].ID, "never deliverable")
	require.NoError(t, err)
	require.Equal(t, 1, changed)
	_, rest := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: lease, Ordered: true})
	require.Equal(t, []string{msgs[1].UUID, msgs[2].UUID}, []string{rest[0].UUID, rest[1].UUID},
		"the dead row is never claimed again, and no longer holds its key back")
	if h.ListDead == nil {
		return
	}
	dead, err := h.ListDead(ctx(t), s)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Equal(t, msgs[0].UUID, dead[0].UUID)
	require.Equal(t, "never deliverable", dead[0].LastError)
	require.Equal(t, 1, dead[0].Attempts, "the final attempt is charged")
	require.Equal(t, []byte(msgs[0].Payload), dead[0].Payload)
}

func testRequeue(t *testing.T, h Harness) {
	if h.Requeue == nil {
		t.Skip("Harness.Requeue is nil")
	}
	s, insert := h.New(t)
	insert(t, "t", messages(2, nil)...)
	token, rows := claim(t, s, all)
	c := ctx(t)
	for _, r := range rows {
		_, err := s.MarkDead(c, token, r.ID, "dead")
		require.NoError(t, err)
	}
	requeued, err := h.Requeue(c, s, rows[0].ID, 1<<62)
	require.NoError(t, err)
	require.Equal(t, 1, requeued, "only dead rows that exist")
	_, again := claim(t, s, all)
	require.Len(t, again, 1)
	require.Equal(t, rows[0].ID, again[0].ID)
	require.Zero(t, again[0].Attempts, "a fresh budget")
}

func testOrderedBlocked(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(6, func(i int) string { return []string{"a", "b"}[i%2] })...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
	require.Len(t, rows, 1)
	require.Equal(t, "a", rows[0].PartitionKey)
	_, err := s.RecordFailure(ctx(t), token, rows[0].ID, "boom", time.Hour)
	require.NoError(t, err)

	_, rest := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.Len(t, rest, 3, "key b, whole")
	for _, r := range rest {
		require.Equal(t, "b", r.PartitionKey, "key a waits for its head")
	}
	_, unordered := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour})
	require.Len(t, unordered, 2, "without ordering key a's later rows go")
}

// testOrderedPrefix: ordered claims of two rows at a time, with every claim
// held (hour-long leases), over three interleaved keys. Each key's claimed
// rows are a prefix of its rows: a row is taken only with, or after, every
// earlier row of its key, never past a row another claim holds.
func testOrderedPrefix(t *testing.T, h Harness) {
	s, insert := h.New(t)
	key := func(i int) string { return fmt.Sprint("k", i%3) }
	insert(t, "t", messages(12, key)...)
	claimed := map[string][]int{}
	for range 12 {
		_, rows := claim(t, s, relaystore.ClaimRequest{Limit: 2, Lease: time.Hour, Ordered: true})
		require.LessOrEqual(t, len(rows), 2)
		for _, r := range rows {
			seq, err := strconv.Atoi(r.Metadata.Get("seq"))
			require.NoError(t, err)
			claimed[r.PartitionKey] = append(claimed[r.PartitionKey], seq)
		}
	}
	require.NotEmpty(t, claimed)
	for k, seqs := range claimed {
		var want []int
		for i := 0; i < 12 && len(want) < len(seqs); i++ {
			if key(i) == k {
				want = append(want, i)
			}
		}
		require.Equal(t, want, seqs, "key %s: a prefix of its rows, in order", k)
	}
}

// testStuckKey: a key whose head backs off holds back its own later rows
// and nothing else, whatever the length of its tail; without ordering the
// tail goes.
func testStuckKey(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(300, func(int) string { return "hot" })...)
	insert(t, "t", messages(40, func(i int) string { return fmt.Sprint("k", i%8) })...)
	insert(t, "t", messages(5, nil)...)
	token, head := claim(t, s, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
	require.Len(t, head, 1)
	require.Equal(t, "hot", head[0].PartitionKey, "the oldest key comes first")
	_, err := s.RecordFailure(ctx(t), token, head[0].ID, "poison", time.Hour)
	require.NoError(t, err)

	seen := map[string]int{}
	for range 20 {
		token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 7, Lease: time.Hour, Ordered: true})
		for _, r := range rows {
			require.NotEqual(t, "hot", r.PartitionKey, "no row behind the stuck head")
			seen[r.PartitionKey]++
		}
		_, err := s.MarkPublished(ctx(t), token, ids(rows), false) // so each key moves on
		require.NoError(t, err)
	}
	require.Equal(t, 45, seen["k0"]+seen["k1"]+seen["k2"]+seen["k3"]+seen["k4"]+seen["k5"]+seen["k6"]+seen["k7"]+seen[""],
		"every other row, keyed or not: %v", seen)
	_, tail := claim(t, s, relaystore.ClaimRequest{Limit: 1000, Lease: time.Hour})
	require.Len(t, tail, 299, "unordered, the stuck key's tail goes")
}

// testWaiting: a row backing off is not claimed before its delay passes,
// and is claimed once it has, with its attempt counted; a row with a long
// delay stays out meanwhile.
func testWaiting(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(3, func(i int) string { return []string{"", "k", ""}[i] })...)
	token, rows := claim(t, s, all)
	require.Len(t, rows, 3)
	for i, delay := range []time.Duration{time.Second, time.Second, time.Hour} {
		_, err := s.RecordFailure(ctx(t), token, rows[i].ID, "boom", delay)
		require.NoError(t, err)
	}
	_, none := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: lease, Ordered: true})
	require.Empty(t, none, "nothing is due yet")
	_, again := eventually(t, s, relaystore.ClaimRequest{Limit: 10, Lease: lease, Ordered: true}, "the short delays to pass", n(2))
	require.Equal(t, ids(rows[:2]), ids(again))
	for _, r := range again {
		require.Equal(t, 1, r.Attempts)
	}
}

// testMore: a claim that took its limit says more may be due; one that
// took everything does not.
func testMore(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(5, func(i int) string { return []string{"", "a", "b", "", "a"}[i] })...)
	for _, ordered := range []bool{false, true} {
		c, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 2, Lease: time.Second, Ordered: ordered})
		require.NoError(t, err)
		require.Len(t, c.Rows, 2)
		require.True(t, c.More, "ordered=%v: stopped at the limit", ordered)
		_, err = s.Release(ctx(t), c.Token, ids(c.Rows))
		require.NoError(t, err)
	}
	c, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 100, Lease: lease, Ordered: true})
	require.NoError(t, err)
	require.Len(t, c.Rows, 5)
	require.False(t, c.More, "took everything")
}

// testStats: the counts of each state, per topic, after a mix of
// outcomes; published rows are not counted.
func testStats(t *testing.T, h Harness) {
	if h.Stats == nil {
		t.Skip("Harness.Stats is nil")
	}
	s, insert := h.New(t)
	insert(t, "a", messages(5, nil)...)
	insert(t, "b", messages(3, nil)...)
	insert(t, "c", messages(2, func(int) string { return "k" })...)
	insert(t, "d", messages(1, nil)...)
	c := ctx(t)
	only := func(topic string) relaystore.TopicFilter { return relaystore.TopicFilter{Names: []string{topic}} }
	token, a := claim(t, s, relaystore.ClaimRequest{Topics: only("a"), Limit: 2, Lease: time.Hour})
	_, err := s.RecordFailure(c, token, a[0].ID, "boom", time.Hour)
	require.NoError(t, err)
	token, b := claim(t, s, relaystore.ClaimRequest{Topics: only("b"), Limit: 3, Lease: time.Hour})
	_, err = s.MarkPublished(c, token, ids(b[:1]), true)
	require.NoError(t, err)
	_, err = s.MarkDead(c, token, b[1].ID, "dead")
	require.NoError(t, err)
	token, d := claim(t, s, relaystore.ClaimRequest{Topics: only("d"), Limit: 1, Lease: time.Hour})
	_, err = s.MarkPublished(c, token, ids(d), true)
	require.NoError(t, err)

	st, err := h.Stats(c, s)
	require.NoError(t, err)
	got := map[string][4]int{}
	for _, ts := range st.Topics {
		got[ts.Topic] = [4]int{ts.Pending, ts.Waiting, ts.Leased, ts.Dead}
		require.False(t, ts.BacklogCapped || ts.DeadCapped)
		if ts.Undelivered() > 0 {
			require.Less(t, ts.OldestPending, time.Minute, ts.Topic)
		} else {
			require.Zero(t, ts.OldestPending, ts.Topic)
		}
		if ts.Dead > 0 {
			require.Less(t, ts.OldestDead, time.Minute, ts.Topic)
		}
	}
	require.Equal(t, map[string][4]int{
		"a": {3, 1, 1, 0}, // pending, waiting, leased, dead
		"b": {0, 0, 1, 1},
		"c": {2, 0, 0, 0},
	}, got, "topic d has only a published row")
}

func testTopicFilter(t *testing.T, h Harness) {
	s, insert := h.New(t)
	keyed := func(i int) string { return []string{"", "k"}[i%2] } // keyed and keyless rows
	insert(t, "orders.placed", messages(2, keyed)...)
	insert(t, "orders.refunded", messages(2, keyed)...)
	insert(t, "payments", messages(2, keyed)...)
	insert(t, "ordersX", messages(1, keyed)...)
	topics := func(rows []relaystore.Row) map[string]int {
		m := map[string]int{}
		for _, r := range rows {
			m[r.Topic]++
		}
		return m
	}
	_, byName := claim(t, s, relaystore.ClaimRequest{Topics: relaystore.TopicFilter{Names: []string{"payments"}}, Limit: 10, Lease: lease, Ordered: true})
	require.Equal(t, map[string]int{"payments": 2}, topics(byName))
	_, byPrefix := claim(t, s, relaystore.ClaimRequest{Topics: relaystore.TopicFilter{Prefixes: []string{"orders."}}, Limit: 10, Lease: lease, Ordered: true})
	require.Equal(t, map[string]int{"orders.placed": 2, "orders.refunded": 2}, topics(byPrefix))
	_, rest := claim(t, s, all)
	require.Equal(t, map[string]int{"ordersX": 1}, topics(rest))
}

func testListen(t *testing.T, h Harness) {
	s, _ := h.New(t)
	c, cancel := context.WithCancel(ctx(t))
	done := make(chan error, 1)
	go func() { done <- s.Listen(c, func() {}) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, relaystore.ErrNoWakeUps, "a store without notifications says so at once")
		cancel()
		return
	case <-time.After(200 * time.Millisecond):
	}
	// It listens: it must end with ctx.
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(30 * time.Second):
		t.Fatal("Listen did not return after its context ended")
	}
}

// testMaintain: maintenance of a healthy table succeeds, and again.
func testMaintain(t *testing.T, h Harness) {
	s, insert := h.New(t)
	insert(t, "t", messages(3, nil)...)
	token, rows := claim(t, s, all)
	_, err := s.MarkPublished(ctx(t), token, ids(rows), false)
	require.NoError(t, err)
	require.NoError(t, s.Maintain(ctx(t)))
	require.NoError(t, s.Maintain(ctx(t)))
}

func testConfig(t *testing.T, h Harness) {
	s, _ := h.New(t)
	cfg := s.Config()
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
}
