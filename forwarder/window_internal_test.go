package forwarder

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

func sizedRows(size int, ids ...int64) []relaystore.Row {
	out := make([]relaystore.Row, len(ids))
	for i, id := range ids {
		out[i] = relaystore.Row{ID: id, Topic: "t", Payload: make([]byte, size)}
	}
	return out
}

// The window takes claimed rows while it holds fewer than MaxInFlightBytes
// (always one when empty, however large), gives the rest back, and sizes
// the next claims by what it learnt: a backlog of large messages costs
// about MaxInFlightBytes, not MaxInFlight times the largest message.
func TestWindowBoundsInFlightBytes(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	const maxBytes = 64 * mib
	w := newWindow(true)
	require.Equal(t, 1, w.byteRoom(maxBytes), "nothing learnt: one row first")

	// A claim of 30 rows of 8 MiB: 8 fit (64 MiB), 22 go back.
	in, out := w.admit(sizedRows(8*mib, idsFrom(1, 30)...), maxBytes)
	require.Len(t, in, 8)
	require.Len(t, out, 22)
	require.Equal(t, int64(9), out[0].ID, "the rest is a suffix: order kept")
	w.add("tok", in, time.Now())
	require.Equal(t, 64*mib, w.bytes)
	require.Zero(t, w.byteRoom(maxBytes), "full: no claim")
	require.Equal(t, 8, w.byteCapacity(maxBytes))

	w.remove([]int64{1, 2})
	require.Equal(t, 48*mib, w.bytes)
	require.Equal(t, 2, w.byteRoom(maxBytes), "room for two of the size learnt")

	// One row larger than the bound is taken when the window is empty.
	w = newWindow(true)
	in, out = w.admit(sizedRows(100*mib, 1, 2), maxBytes)
	require.Len(t, in, 1)
	require.Len(t, out, 1)
	w.add("tok", in, time.Now())
	require.Zero(t, w.byteRoom(maxBytes))
	w.remove([]int64{1})
	require.Zero(t, w.bytes)
	require.Equal(t, 1, w.byteRoom(maxBytes))

	// Small rows: the row limit binds, not the bytes.
	w = newWindow(true)
	in, out = w.admit(sizedRows(100, idsFrom(1, 1000)...), maxBytes)
	require.Len(t, in, 1000)
	require.Empty(t, out)
}

func idsFrom(from, n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = from + int64(i)
	}
	return out
}
