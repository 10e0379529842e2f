package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

var strictReq = relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, StrictOrder: true}

// deadHead inserts key k's rows r0..r2 and key j's r3, claims r0 alone and
// kills it.
func deadHead(t *testing.T, s relaystore.Store, insert Insert) []int64 {
	t.Helper()
	insert(t, "t", messages(4, func(i int) string { return []string{"k", "k", "k", "j"}[i] })...)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true, StrictOrder: true})
	require.Len(t, rows, 1)
	require.Equal(t, "k", rows[0].PartitionKey, "the oldest key first")
	changed, err := s.MarkDead(ctx(t), token, rows[0].ID, "poison")
	require.NoError(t, err)
	require.Equal(t, 1, changed)
	return []int64{rows[0].ID, rows[0].ID + 1, rows[0].ID + 2, rows[0].ID + 3}
}

// testStrictClaim: with StrictOrder a dead head holds its key's later rows
// back (other keys go); without it they go; requeued, the head goes first.
func testStrictClaim(t *testing.T, h Harness) {
	s, insert := h.New(t)
	rowIDs := deadHead(t, s, insert)
	token, rows := claim(t, s, strictReq)
	require.Equal(t, []int64{rowIDs[3]}, ids(rows), "key k is held by its dead head; key j goes")
	_, err := s.MarkPublished(ctx(t), token, ids(rows), false)
	require.NoError(t, err)

	token, rows = claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.Equal(t, rowIDs[1:3], ids(rows), "not strict: the key moves on past its dead head")
	_, err = s.Release(ctx(t), token, ids(rows))
	require.NoError(t, err)

	if h.Requeue == nil {
		return
	}
	_, err = h.Requeue(ctx(t), s, rowIDs[0])
	require.NoError(t, err)
	_, rows = claim(t, s, strictReq)
	require.Equal(t, rowIDs[:3], ids(rows), "requeued, the head goes first, then the rows behind it")
}

func needBlocked(t *testing.T, h Harness) {
	if h.BlockedKeys == nil || h.RequeueKey == nil || h.SkipKey == nil {
		t.Skip("Harness.BlockedKeys, RequeueKey or SkipKey is nil")
	}
}

// testBlockedKeys: a key whose head backs off is listed with its head,
// attempts, error and the rows behind it; a free key is not; a dead head
// holds (and is listed) only under StrictOrder.
func testBlockedKeys(t *testing.T, h Harness) {
	needBlocked(t, h)
	s, insert := h.New(t)
	insert(t, "t", messages(7, func(i int) string { return []string{"a", "b", "a", "c", "a", "c", "a"}[i] })...)
	c := ctx(t)
	for range 2 {
		token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 3, Lease: time.Hour, Ordered: true})
		byKey := map[string]relaystore.Row{}
		for _, r := range rows {
			if _, ok := byKey[r.PartitionKey]; !ok {
				byKey[r.PartitionKey] = r
			}
		}
		var give []int64
		for _, r := range rows {
			switch {
			case r.PartitionKey == "a" && r.ID == byKey["a"].ID:
				_, err := s.RecordFailure(c, token, r.ID, "boom\nline two", time.Hour)
				require.NoError(t, err)
			case r.PartitionKey == "c" && r.ID == byKey["c"].ID:
				_, err := s.MarkDead(c, token, r.ID, "dead")
				require.NoError(t, err)
			default:
				give = append(give, r.ID)
			}
		}
		_, err := s.Release(c, token, give)
		require.NoError(t, err)
		if len(rows) > 0 {
			break
		}
	}
	got, err := h.BlockedKeys(c, s, outbox.BlockedQuery{})
	require.NoError(t, err)
	require.Len(t, got, 1, "key a only: b is free, c's dead head does not hold it without StrictOrder: %+v", got)
	b := got[0]
	require.Equal(t, "t", b.Topic)
	require.Equal(t, "a", b.Key)
	require.Equal(t, outbox.HeadWaiting, b.State)
	require.Equal(t, 1, b.Attempts)
	require.Equal(t, "boom\nline two", b.LastError)
	require.Equal(t, 3, b.Behind)
	require.False(t, b.BehindCapped)
	require.Greater(t, b.RetryIn, 50*time.Minute, "retried in about an hour")
	require.GreaterOrEqual(t, b.HeadAge, b.BehindAge, "the head is older than what waits behind it")

	_, err = h.RequeueKey(c, s, "t", "b")
	require.ErrorIs(t, err, outbox.ErrNotBlocked)
	_, err = h.SkipKey(c, s, "t", "nope")
	require.ErrorIs(t, err, outbox.ErrNotBlocked)
	_, err = h.BlockedKeys(c, s, outbox.BlockedQuery{Limit: outbox.MaxBlockedPage + 1})
	require.Error(t, err, "a page too large")

	if h.NewStrict == nil {
		return
	}
	s, insert = h.NewStrict(t)
	rowIDs := deadHead(t, s, insert)
	got, err = h.BlockedKeys(c, s, outbox.BlockedQuery{Topic: "t"})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, outbox.BlockedKey{Topic: "t", Key: "k", HeadID: rowIDs[0], State: outbox.HeadDead, Attempts: 1, LastError: "poison",
		HeadAge: got[0].HeadAge, Behind: 2, BehindAge: got[0].BehindAge}, got[0])
}

// testBlockedPaging: pages follow the (topic, key) cursor and list each
// blocked key once.
func testBlockedPaging(t *testing.T, h Harness) {
	needBlocked(t, h)
	s, insert := h.New(t)
	const keys = 5
	insert(t, "t", messages(2*keys, func(i int) string { return fmt.Sprint("k", i%keys) })...)
	c := ctx(t)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: keys, Lease: time.Hour, Ordered: true})
	require.Len(t, rows, keys, "each key's head")
	for _, r := range rows {
		_, err := s.RecordFailure(c, token, r.ID, "boom", time.Hour)
		require.NoError(t, err)
	}
	var seen []string
	q := outbox.BlockedQuery{Limit: 2}
	for range keys {
		page, err := h.BlockedKeys(c, s, q)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), 2)
		if len(page) == 0 {
			break
		}
		for _, b := range page {
			seen = append(seen, b.Key)
			require.Equal(t, 1, b.Behind)
		}
		q.AfterTopic, q.AfterKey = page[len(page)-1].Topic, page[len(page)-1].Key
	}
	require.Equal(t, []string{"k0", "k1", "k2", "k3", "k4"}, seen)
}

// testStrictRequeue: under StrictOrder, RequeueKey makes the dead head
// pending with a fresh budget; it goes first and its key follows in order.
func testStrictRequeue(t *testing.T, h Harness) {
	needBlocked(t, h)
	if h.NewStrict == nil {
		t.Skip("Harness.NewStrict is nil")
	}
	s, insert := h.NewStrict(t)
	rowIDs := deadHead(t, s, insert)
	c := ctx(t)
	act, err := h.RequeueKey(c, s, "t", "k")
	require.NoError(t, err)
	require.Equal(t, outbox.KeyAction{HeadID: rowIDs[0], State: outbox.HeadDead}, act)
	_, rows := claim(t, s, strictReq)
	require.Equal(t, rowIDs, ids(rows), "the head, then its key in order (and key j)")
	require.Zero(t, rows[0].Attempts, "a fresh budget")
	got, err := h.BlockedKeys(c, s, outbox.BlockedQuery{})
	require.NoError(t, err)
	require.Empty(t, got)
	_, err = h.RequeueKey(c, s, "t", "k")
	require.ErrorIs(t, err, outbox.ErrNotBlocked, "twice: nothing holds the key now")
}

// testStrictSkip: under StrictOrder, SkipKey drops the dead head and the
// rows behind it go, in order.
func testStrictSkip(t *testing.T, h Harness) {
	needBlocked(t, h)
	if h.NewStrict == nil {
		t.Skip("Harness.NewStrict is nil")
	}
	s, insert := h.NewStrict(t)
	rowIDs := deadHead(t, s, insert)
	c := ctx(t)
	act, err := h.SkipKey(c, s, "t", "k")
	require.NoError(t, err)
	require.Equal(t, rowIDs[0], act.HeadID)
	_, rows := claim(t, s, strictReq)
	require.Equal(t, rowIDs[1:], ids(rows), "the rows behind the skipped head, in order")
	if h.ListDead != nil {
		dead, err := h.ListDead(c, s)
		require.NoError(t, err)
		require.Empty(t, dead, "the skipped head is gone")
	}
}

// testRequeueWaiting: RequeueKey on a head backing off makes it due now,
// keeping its attempts.
func testRequeueWaiting(t *testing.T, h Harness) {
	needBlocked(t, h)
	s, insert := h.New(t)
	insert(t, "t", messages(2, func(int) string { return "k" })...)
	c := ctx(t)
	token, rows := claim(t, s, relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Ordered: true})
	require.Len(t, rows, 1)
	_, err := s.RecordFailure(c, token, rows[0].ID, "boom", time.Hour)
	require.NoError(t, err)
	_, none := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.Empty(t, none)
	act, err := h.RequeueKey(c, s, "t", "k")
	require.NoError(t, err)
	require.Equal(t, outbox.KeyAction{HeadID: rows[0].ID, State: outbox.HeadWaiting}, act)
	_, again := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true})
	require.Equal(t, []int64{rows[0].ID, rows[0].ID + 1}, ids(again), "the head now, then the row behind it")
	require.Equal(t, 1, again[0].Attempts, "its attempt still counts")
}
