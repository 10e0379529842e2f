package forwarder

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/internal/delivery"
	"github.com/e0a82c8c/watermill-outbox/retry"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// recordGrace is how long an ack or nack that came before the handler began
// waits for it to begin: InstantAck acks first and handles right after, a
// Deduplicator acks and never handles. After it the delivery counts as
// unhandled, and a handler that begins later publishes nothing.
const recordGrace = 2 * time.Second

// delivered is a watcher's result: the verdict on one emitted row.
type delivered struct {
	h       *held
	verdict delivery.Verdict
	acked   bool // the router acked (rather than nacked) the message
}

// verdicts carries the watchers' results to the loop. A watcher adds its
// result and goes; the loop takes all that arrived since it last looked,
// in the order they came, on one wake-up: at thousands of messages a
// second a channel send per verdict cost the loop a select and the watcher
// a wait for it, per message.
type verdicts struct {
	mu    sync.Mutex
	queue []delivered
	ready chan struct{} // holds a token while queue is not empty
}

func newVerdicts() *verdicts { return &verdicts{ready: make(chan struct{}, 1)} }

// add queues d and wakes the loop.
func (v *verdicts) add(d delivered) {
	v.mu.Lock()
	v.queue = append(v.queue, d)
	v.mu.Unlock()
	select {
	case v.ready <- struct{}{}:
	default: // the loop has a token to take already
	}
}

// take returns the queued verdicts, oldest first, and empties the queue.
func (v *verdicts) take() []delivered {
	v.mu.Lock()
	defer v.mu.Unlock()
	q := v.queue
	v.queue = nil
	return q
}

// verdictSource is who fills a delivery's record, the one source of the
// verdict on a row handed out: the subscriber's watcher reads the record
// the same way, and the machine settles the row by it, whoever filled it.
type verdictSource interface {
	// handedOut: the message carrying rec was taken from the channel.
	handedOut(rec *delivery.Record)
	// answered: the message was acked (or nacked).
	answered(rec *delivery.Record, acked bool)
}

// handlerVerdicts: the forwarder's handler records each delivery
// (delivery.Record's Begin and End); the ack only says what the router,
// after its middlewares, made of the message.
type handlerVerdicts struct{}

func (handlerVerdicts) handedOut(*delivery.Record)      {}
func (handlerVerdicts) answered(*delivery.Record, bool) {}

// errNackedByHandler is a plain consumer's nack.
var errNackedByHandler = errors.New("nacked by the handler")

// ackVerdicts: a plain consumer is its own handler, as for any Watermill
// subscriber: its delivery begins when the message is handed out and ends
// with the ack (published) or the nack (a transient failure).
type ackVerdicts struct{}

func (ackVerdicts) handedOut(rec *delivery.Record) { _, _ = rec.Begin() }

func (ackVerdicts) answered(rec *delivery.Record, acked bool) {
	if acked {
		rec.End(0, nil)
		return
	}
	rec.End(retry.Transient, errNackedByHandler)
}

// prepare builds h's message, which the machine made ready. Its watcher
// starts when it is handed out: a row waiting in the window costs no
// goroutine.
func (sub *subscription) prepare(h *held) {
	md := make(message.Metadata, len(h.row.Metadata)+3)
	for k, v := range h.row.Metadata {
		md[k] = v
	}
	md[outbox.OutboxIDMetadataKey] = strconv.FormatInt(h.row.ID, 10)
	md[outbox.AttemptMetadataKey] = strconv.Itoa(h.row.Attempts + 1)
	md[outbox.TopicMetadataKey] = h.row.Topic

	msg := message.NewMessage(h.row.UUID, h.row.Payload)
	msg.Metadata = md
	h.base = rowCtx{Context: sub.ctx, row: &h.row}
	ctx, cancel := context.WithCancel(&h.base)
	rec := delivery.New()
	msg.SetContext(delivery.WithRecord(ctx, rec))
	h.msg, h.cancel, h.rec = msg, cancel, rec
}

// emitted starts the watcher of a row just handed out: it reports the
// verdict on the row to the loop, and ends when the loop stops.
func (sub *subscription) emitted(h *held) {
	sub.s.source.handedOut(h.rec)
	sub.work.Add(1)
	go func() {
		defer sub.work.Done()
		if d, ok := sub.watch(h); ok {
			sub.verdicts.add(d) // after the loop ended, nobody reads it: as a verdict that came too late
		}
	}()
}

// watch waits for the message's ack or nack and for its record, and
// returns the verdict; ok is false when the subscription stopped first.
func (sub *subscription) watch(h *held) (d delivered, ok bool) {
	d.h = h
	select {
	case <-h.msg.Acked():
		d.acked = true
	case <-h.msg.Nacked():
	case <-sub.stop:
		return d, false
	}
	rec := h.rec
	sub.s.source.answered(rec, d.acked)
	if _, started := rec.Ended(); !started {
		t := time.NewTimer(recordGrace)
		select {
		case <-rec.Begun():
		case <-t.C:
		case <-sub.stop:
		}
		t.Stop()
	}
	for {
		if v, sealed := rec.Seal(); sealed {
			d.verdict = v
			return d, true
		}
		ended, _ := rec.Ended()
		select {
		case <-ended:
		case <-sub.stop:
			return d, false
		}
	}
}

// seal seals the records of rows handed out, as the loop drains, and
// returns those whose handler had not begun: it can no longer begin.
func seal(hs []*held) []*held {
	var unhandled []*held
	for _, h := range hs {
		if v, ok := h.rec.Seal(); ok && !v.Recorded {
			unhandled = append(unhandled, h)
		}
	}
	return unhandled
}
