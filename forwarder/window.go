package forwarder

import (
	"context"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/internal/delivery"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// rowState is where a claimed row is in its subscription. Every held row is
// in exactly one state; rows leave the window once their fate is written.
type rowState int

const (
	// queued: behind the row of its key that is in flight (ordering).
	queued rowState = iota
	// ready: its message is built and waits to be emitted.
	ready
	// emitted: handed to the handler; its verdict is awaited.
	emitted
	// acking: published; its ack is batched or being written.
	acking
	// settling: a failure, dead or release write is in progress.
	settling
)

// held is a claimed row this subscription is responsible for.
type held struct {
	row       relaystore.Row
	token     string
	state     rowState
	renewedAt time.Time // when the lease was last set, local clock
	chain     string    // per-key order chain, "" when unordered or keyless

	// From ready on:
	base   rowCtx // the parent of msg's context: carries row to the handler
	msg    *message.Message
	cancel context.CancelFunc
	rec    *delivery.Record // filled by the subscriber's verdictSource
}

// window is the set of claimed rows a subscription holds (at most
// MaxInFlight, and MaxInFlightBytes but for one row), the queue of rows ready to be emitted, and the per-key
// chains that keep one row of each key in flight at a time.
type window struct {
	ordered bool
	held    map[int64]*held
	ready   []*held            // in emission order
	chains  map[string][]*held // per key: the rows queued behind the one in flight

	bytes   int // rowSize of the held rows
	rowSize int // the mean rowSize of the last claim's rows; 0 before any
}

func newWindow(ordered bool) *window {
	return &window{ordered: ordered, held: make(map[int64]*held), chains: make(map[string][]*held)}
}

func (w *window) size() int { return len(w.held) }

// rowSize is what a row costs MaxInFlightBytes: its payload and its
// metadata's keys and values.
func rowSize(r relaystore.Row) int {
	n := len(r.Payload)
	for k, v := range r.Metadata {
		n += len(k) + len(v)
	}
	return n
}

// admit splits claimed rows (in id order) into those the window takes,
// while it holds fewer than maxBytes (and always one when it is empty),
// and the rest, a suffix of the claim, which must be given back: so a
// backlog of large messages costs about maxBytes of memory. It learns the
// claim's mean row size, which sizes the next claims (byteRoom).
func (w *window) admit(rows []relaystore.Row, maxBytes int) (in, out []relaystore.Row) {
	if len(rows) == 0 {
		return nil, nil
	}
	total, taken := 0, 0
	for i, r := range rows {
		n := rowSize(r)
		total += n
		if out == nil && (w.size()+i == 0 || w.bytes+taken < maxBytes) {
			taken += n
			continue
		}
		if out == nil {
			in, out = rows[:i], rows[i:]
		}
	}
	w.rowSize = max(1, total/len(rows))
	if out == nil {
		in = rows
	}
	return in, out
}

// byteRoom is how many rows of the mean size learnt the window has room
// for under maxBytes: one before it learnt any, so a relay starting on a
// backlog of large messages claims one first, not BatchSize of them.
func (w *window) byteRoom(maxBytes int) int {
	switch {
	case w.rowSize == 0:
		return max(0, 1-w.size())
	case w.bytes >= maxBytes:
		return 0
	}
	return max(1, (maxBytes-w.bytes)/w.rowSize)
}

// byteCapacity is how many rows of the mean size learnt the empty window
// holds under maxBytes.
func (w *window) byteCapacity(maxBytes int) int {
	if w.rowSize == 0 {
		return 1
	}
	return max(1, maxBytes/w.rowSize)
}

// add takes claimed rows (in id order) into the window and returns those
// that are ready: keyless rows, and the first row of each key that has none
// in flight. The others queue behind their key's row in flight.
func (w *window) add(token string, rows []relaystore.Row, now time.Time) []*held {
	out := make([]*held, 0, len(rows))
	for _, r := range rows {
		h := &held{row: r, token: token, renewedAt: now}
		w.bytes += rowSize(r)
		if w.ordered && r.PartitionKey != "" {
			h.chain = r.Topic + "\x00" + r.PartitionKey
		}
		w.held[r.ID] = h
		if h.chain != "" {
			if q, busy := w.chains[h.chain]; busy {
				h.state = queued
				w.chains[h.chain] = append(q, h)
				continue
			}
			w.chains[h.chain] = nil // in flight, nobody behind yet
		}
		out = append(out, h)
	}
	return out
}

// pushReady queues h for emission.
func (w *window) pushReady(h *held) {
	h.state = ready
	w.ready = append(w.ready, h)
}

// next returns the row to emit next, or nil.
func (w *window) next() *held {
	if len(w.ready) == 0 {
		return nil
	}
	return w.ready[0]
}

// popEmitted removes the row next returned from the ready queue, as
// handed out, and returns it.
func (w *window) popEmitted() *held {
	h := w.ready[0]
	w.ready[0] = nil
	w.ready = w.ready[1:]
	h.state = emitted
	return h
}

// holds reports whether h is still this window's row (not released by a
// shutdown meanwhile).
func (w *window) holds(h *held) bool { return w.held[h.row.ID] == h }

// published moves h to acking and returns the next row of its key, if any,
// which may now be emitted.
func (w *window) published(h *held) *held {
	h.state = acking
	if h.chain == "" {
		return nil
	}
	q := w.chains[h.chain]
	if len(q) == 0 {
		delete(w.chains, h.chain)
		return nil
	}
	w.chains[h.chain] = q[1:]
	return q[0]
}

// failed moves h to settling and returns the rows queued behind it, which
// must be given back: they may not overtake it.
func (w *window) failed(h *held) []*held {
	h.state = settling
	if h.chain == "" {
		return nil
	}
	behind := w.chains[h.chain]
	delete(w.chains, h.chain)
	return behind
}

// remove drops rows whose fate is written.
func (w *window) remove(ids []int64) {
	for _, id := range ids {
		if h, ok := w.held[id]; ok {
			w.bytes -= rowSize(h.row)
			delete(w.held, id)
		}
	}
}

// unemitted takes out of the queues every row not handed to the handler
// (ready or queued), for release, and returns them.
func (w *window) unemitted() []*held {
	out := w.ready
	w.ready = nil
	for key, q := range w.chains {
		out = append(out, q...)
		w.chains[key] = nil // the row in flight keeps the chain busy
	}
	return out
}

// unhanded takes out, like unemitted, every row not handed out, for
// release, and ends the chains of the keys whose row in flight was among
// them (a ready row), so the window takes those keys again: only a key
// whose row in flight stays (emitted) keeps its chain.
func (w *window) unhanded() []*held {
	out := w.unemitted()
	for _, h := range out {
		if h.state == ready && h.chain != "" {
			delete(w.chains, h.chain)
		}
	}
	return out
}

// renewDue returns, by claim token, the rows whose lease was last set
// before due.
func (w *window) renewDue(due time.Time) map[string][]int64 {
	byToken := make(map[string][]int64)
	for id, h := range w.held {
		if h.renewedAt.Before(due) {
			byToken[h.token] = append(byToken[h.token], id)
		}
	}
	for _, ids := range byToken {
		slices.Sort(ids)
	}
	return byToken
}

// renewed records a lease renewal made at at.
func (w *window) renewed(ids []int64, at time.Time) {
	for _, id := range ids {
		if h, ok := w.held[id]; ok {
			h.renewedAt = at
		}
	}
}
