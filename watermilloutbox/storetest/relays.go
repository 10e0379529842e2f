package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// The kit's tests of relay liveness (relaystore.RelayRegistry); a
// store that does not implement it skips them.

func registry(t *testing.T, s relaystore.Store) relaystore.RelayRegistry {
	t.Helper()
	r, ok := s.(relaystore.RelayRegistry)
	if !ok {
		t.Skip("the store does not implement relaystore.RelayRegistry")
	}
	return r
}

func beat(t *testing.T, r relaystore.RelayRegistry, id string, ttl time.Duration) relaystore.Beat {
	t.Helper()
	b, err := r.Beat(ctx(t), id, ttl)
	require.NoError(t, err)
	return b
}

// testLiveRelayKeepsItsLease: the rows of a relay that beats are not
// claimed by another, however many times it looks.
func testLiveRelayKeepsItsLease(t *testing.T, h Harness) {
	s, insert := h.New(t)
	reg := registry(t, s)
	insert(t, "t", messages(3, func(i int) string { return []string{"k", "k", ""}[i] })...)
	require.False(t, beat(t, reg, "relay-a", time.Hour).Lapsed, "a first beat is no lapse")
	beat(t, reg, "relay-b", time.Hour)
	_, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-a"})
	require.Len(t, rows, 3)
	for range 3 {
		require.False(t, beat(t, reg, "relay-a", time.Hour).Lapsed)
		c, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-b"})
		require.NoError(t, err)
		require.Empty(t, c.Rows, "a live relay's rows keep their lease")
	}
	if h.Stats != nil {
		st, err := h.Stats(ctx(t), s)
		require.NoError(t, err)
		require.Len(t, st.Topics, 1)
		require.Equal(t, 3, st.Topics[0].Leased)
		require.Zero(t, st.Topics[0].Orphaned)
		require.Positive(t, st.Topics[0].OldestLeased)
	}
	_, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 1, Lease: time.Hour, Relay: "no'quotes"})
	require.Error(t, err, "a relay id outside the allowed characters")
}

// testGoneRelayIsTakenOver: once a relay has left (or, below, its beat
// expired) its rows are claimed by another relay long before their lease
// ends, in order, as reclaimed; it never takes them back itself, and its
// writes with its stale token change nothing.
func testGoneRelayIsTakenOver(t *testing.T, h Harness) {
	s, insert := h.New(t)
	reg := registry(t, s)
	msgs := messages(4, func(i int) string { return []string{"k", "k", "", "k"}[i] })
	insert(t, "t", msgs...)
	beat(t, reg, "relay-a", time.Hour)
	beat(t, reg, "relay-b", time.Hour)
	stale, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-a"})
	require.Len(t, rows, 4)
	require.NoError(t, reg.Leave(ctx(t), "relay-a"))

	if h.Stats != nil {
		st, err := h.Stats(ctx(t), s)
		require.NoError(t, err)
		require.Len(t, st.Topics, 1)
		require.Equal(t, [2]int{0, 4}, [2]int{st.Topics[0].Leased, st.Topics[0].Orphaned}, "leased, orphaned")
		require.Positive(t, st.Topics[0].OldestLeased)
	}
	c, err := s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-a"})
	require.NoError(t, err)
	require.Empty(t, c.Rows, "a relay never takes its own rows over")

	c, err = s.Claim(ctx(t), relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-b"})
	require.NoError(t, err)
	require.Len(t, c.Rows, 4, "the rows of a relay that left are claimable before their lease ends")
	require.Equal(t, map[string]int{"relay-a": 4}, c.TakenOver)
	for i, r := range c.Rows {
		require.Equal(t, msgs[i].UUID, r.UUID, "in order")
		require.True(t, r.Reclaimed)
	}
	requireFenced(t, s, stale, rows)
	changed, err := s.MarkPublished(ctx(t), c.Token, ids(c.Rows), false)
	require.NoError(t, err)
	require.Equal(t, 4, changed, "the successor's writes stand")
	require.True(t, beat(t, reg, "relay-a", time.Hour).Lapsed, "the relay learns it was declared dead")
	require.False(t, beat(t, reg, "relay-a", time.Hour).Lapsed, "and is alive again")
}

// testExpiredRelayIsTakenOver: a relay whose beat expired (killed, paused)
// loses its rows to the next claim long before their lease ends.
func testExpiredRelayIsTakenOver(t *testing.T, h Harness) {
	s, insert := h.New(t)
	reg := registry(t, s)
	insert(t, "t", messages(3, func(i int) string { return "k" })...)
	beat(t, reg, "relay-b", time.Hour)
	beat(t, reg, "relay-a", time.Second)
	stale, rows := claim(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-a"})
	require.Len(t, rows, 3)
	fresh, again := eventually(t, s, relaystore.ClaimRequest{Limit: 10, Lease: time.Hour, Ordered: true, Relay: "relay-b"},
		"relay-a's beat to expire", n(3))
	require.NotEqual(t, stale, fresh)
	requireFenced(t, s, stale, rows)
	changed, err := s.MarkPublished(ctx(t), fresh, ids(again), false)
	require.NoError(t, err)
	require.Equal(t, 3, changed)
	require.True(t, beat(t, reg, "relay-a", time.Hour).Lapsed)
}

// requireFenced: every write with the stale token changes nothing.
func requireFenced(t *testing.T, s relaystore.Store, stale string, rows []relaystore.Row) {
	t.Helper()
	c := ctx(t)
	for name, write := range map[string]func() (int, error){
		"MarkPublished": func() (int, error) { return s.MarkPublished(c, stale, ids(rows), true) },
		"RecordFailure": func() (int, error) { return s.RecordFailure(c, stale, rows[0].ID, "x", 0) },
		"MarkDead":      func() (int, error) { return s.MarkDead(c, stale, rows[1].ID, "x") },
		"Release":       func() (int, error) { return s.Release(c, stale, ids(rows)) },
		"Renew":         func() (int, error) { return s.Renew(c, stale, ids(rows), time.Hour) },
	} {
		changed, err := write()
		require.NoError(t, err, name)
		require.Zero(t, changed, "%s of the relay declared dead changes nothing", name)
	}
}
