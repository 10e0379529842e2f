package forwarder

import (
	"context"
	"errors"
	"strconv"
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

// prepare builds h's message and makes it ready. Its watcher starts when
// it is emitted: a row waiting in the window costs no goroutine.
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
	var rec *delivery.Record
	if sub.s.records {
		rec = delivery.New()
		ctx = delivery.WithRecord(ctx, rec)
	}
	msg.SetContext(ctx)
	h.msg, h.cancel, h.rec = msg, cancel, rec
	sub.win.pushReady(h)
}

// emitted starts the watcher of a row just handed out: it reports the
// verdict on the row to the loop, and ends when the loop stops.
func (sub *subscription) emitted(h *held) {
	sub.work.Add(1)
	go func() {
		defer sub.work.Done()
		d, ok := sub.watch(h, h.rec)
		if !ok {
			return
		}
		select {
		case sub.delivered <- d:
		case <-sub.stop:
		}
	}()
}

// watch waits for the message's ack or nack and for the handler's record,
// and returns the verdict; ok is false when the subscription stopped first.
func (sub *subscription) watch(h *held, rec *delivery.Record) (d delivered, ok bool) {
	d.h = h
	select {
	case <-h.msg.Acked():
		d.acked = true
	case <-h.msg.Nacked():
	case <-sub.stop:
		return d, false
	}
	if rec == nil {
		// A plain subscriber: the ack is the verdict, as for any Watermill
		// subscriber.
		if d.acked {
			d.verdict = delivery.Verdict{Recorded: true, Published: true}
		} else {
			d.verdict = delivery.Verdict{Recorded: true, Kind: retry.Transient, Err: errors.New("nacked by the handler")}
		}
		return d, true
	}
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
