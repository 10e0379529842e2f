package forwarder

import (
	"cmp"
	"slices"
	"time"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/observe"
)

// machine is every decision of a subscription: which rows it holds and in
// what state (window), when it claims (schedule), which acks it writes,
// which leases it renews, what becomes of each row after its verdict, and
// how it drains. It is pure: events go in as method calls (each with the
// time it happened where it matters), effects come out, and the loop in
// subscription.go carries them out (database writes in workers, the claim
// timer, the channel). It starts no goroutine, reads no clock and calls no
// store, so machine_test.go drives every transition directly.
//
// Every event method returns the effects to carry out, in order, in a
// slice the machine reuses: carry them out before the next event.
type machine struct {
	cfg      config.Config
	win      *window
	sched    *schedule
	acks     acks
	renewing bool // a renewal round is running
	settling int  // fate and release writes in progress
	// draining: Close or the end of ctx; no more claims or emissions, the
	// machine only settles what it holds.
	draining bool
	// lapses is how many times this relay was declared dead, as far as the
	// machine has acted on it (heartbeat); alive: its last beat still keeps
	// it alive, so rows may be handed out.
	lapses int64
	alive  bool
	// lapseBack: the rows a lapse gives back, held until the records of
	// the rows handed out are sealed (doSeal, answered by unhandled).
	lapseBack []*held
	lapseSeal bool

	out []effect
}

// effectKind says what the loop is to do.
type effectKind int

const (
	// doClaim: claim up to n rows in a worker; answer claimed.
	doClaim effectKind = iota
	// doTimer: set the claim timer to fire after d; answer timer.
	doTimer
	// doPrepare: build h's message; it is next in line to be handed out.
	doPrepare
	// doWatch: h was handed out; watch for its verdict, answer delivered.
	doWatch
	// doAck: write the acks of ids (one claim token); answer flushed.
	doAck
	// doFate: write h's failure decision dec; answer settled.
	doFate
	// doRelease: give hs (one claim token) back uncharged, cancelling
	// their messages' contexts; answer settled.
	doRelease
	// doRenew: renew the leases of due (ids by claim token); answer
	// renewed.
	doRenew
	// doSeal: seal the delivery records of hs, handed out while draining;
	// answer unhandled with those whose handler had not begun.
	doSeal
	// doClose: close the channel of messages and end the loop after a
	// grace of d at most.
	doClose
	// doWarn: warn, once per kind, of a router middleware's misuse seen in
	// h's delivery (err: the failure recorded, if any).
	doWarn
	// doObserveFailure: tell the Observer that h's delivery failed, of
	// kind failure, because of err.
	doObserveFailure
	// doLeaseLost: a write of op named n rows and changed only got: the
	// others were taken over by another relay. Logged.
	doLeaseLost
	// doLapseLog: a lapse gives back n rows of a window of got. Logged.
	doLapseLog
)

// effect is one thing the loop is to do; the fields used depend on kind.
type effect struct {
	kind    effectKind
	n       int           // doClaim: limit; doLeaseLost: rows written
	got     int           // doLeaseLost: rows changed
	d       time.Duration // doTimer, doClose
	h       *held         // doPrepare, doWatch, doFate, doWarn, doObserveFailure
	hs      []*held       // doRelease, doSeal
	token   string        // doAck, doRelease
	ids     []int64       // doAck
	dec     decision      // doFate
	due     map[string][]int64
	op      observe.WriteOp     // doLeaseLost
	misuse  misuse              // doWarn
	failure observe.FailureKind // doObserveFailure
	err     error               // doWarn, doObserveFailure
}

// misuse is a router middleware's ack or nack against the handler's
// record: nothing is lost, but the setup costs retries.
type misuse int

const (
	// ackedFailed: acked although the publish failed (PoisonQueue).
	ackedFailed misuse = iota + 1
	// ackedUnhandled: acked without the handler running (Deduplicator).
	ackedUnhandled
	// nackedPublished: nacked after the destination accepted it.
	nackedPublished
)

// misuseOf returns the misuse a delivery shows, or 0. A plain consumer's
// verdict is its ack, so it shows none.
func misuseOf(d delivered) misuse {
	v := d.verdict
	switch {
	case d.acked && v.Recorded && !v.Published:
		return ackedFailed
	case d.acked && !v.Recorded:
		return ackedUnhandled
	case !d.acked && v.Published:
		return nackedPublished
	}
	return 0
}

// newMachine returns the machine of a subscription starting when the
// relay had found lapses lapses.
func newMachine(cfg config.Config, lapses int64) *machine {
	return &machine{cfg: cfg, win: newWindow(!cfg.DisableOrdering), sched: newSchedule(cfg), lapses: lapses, alive: true}
}

// begin clears the effects of the last event.
func (m *machine) begin() {
	clear(m.out)
	m.out = m.out[:0]
}

func (m *machine) emit(e effect) { m.out = append(m.out, e) }

// pump ends every event: a claim starts when the schedule says so and the
// window has room (not while draining), and the next batch of acks is
// written when none is being written.
func (m *machine) pump() []effect {
	if !m.draining && m.sched.ready(m.free(), m.capacity()) {
		m.emit(effect{kind: doClaim, n: m.sched.start(m.free())})
	}
	if token, ids := m.acks.next(); ids != nil {
		m.emit(effect{kind: doAck, token: token, ids: ids})
	}
	return m.out
}

// free is the window's room in rows: under MaxInFlight, and under
// MaxInFlightBytes for rows of the size the window has learnt.
func (m *machine) free() int {
	return min(m.cfg.MaxInFlight-m.win.size(), m.win.byteRoom(m.cfg.MaxInFlightBytes))
}

// capacity is how many rows the empty window holds.
func (m *machine) capacity() int {
	return min(m.cfg.MaxInFlight, m.win.byteCapacity(m.cfg.MaxInFlightBytes))
}

// start: the subscription begins; it claims at once, and polls after.
func (m *machine) start() []effect {
	m.begin()
	m.emit(effect{kind: doTimer, d: m.cfg.PollingInterval})
	return m.pump()
}

// timer: the claim timer fired (a poll, a re-check after a wake-up, or
// the retry of a failed claim).
func (m *machine) timer() []effect {
	m.begin()
	m.sched.onTimer()
	return m.pump()
}

// wake: a commit notification arrived at now.
func (m *machine) wake(now time.Time) []effect {
	m.begin()
	m.sched.onWake(now)
	return m.pump()
}

// claimed: a claim returned at now. A failed claim is tried again after
// r.retryIn. Of the rows claimed, those over MaxInFlightBytes go back at
// once, uncharged; the others enter the window, and those ready are
// prepared, or, while draining, go straight back.
func (m *machine) claimed(r claimed, now time.Time) []effect {
	m.begin()
	if r.err != nil {
		m.sched.onClaimFailed()
		m.emit(effect{kind: doTimer, d: r.retryIn})
		return m.pump()
	}
	if r.lapsed && len(r.rows) > 0 {
		// The relay was declared dead while it claimed them: others may
		// have taken them over already. Back (fenced: only those still its
		// own change), and claimed again.
		m.sched.onClaimed(len(r.rows), r.limit, true, m.win.size(), now) // a backlog: no timer
		back := make([]*held, len(r.rows))
		for i, row := range r.rows {
			back[i] = &held{row: row, token: r.token}
		}
		m.release(back)
		return m.pump()
	}
	rows, over := m.win.admit(r.rows, m.cfg.MaxInFlightBytes)
	readied := m.win.add(r.token, rows, now)
	if d, set := m.sched.onClaimed(len(r.rows), r.limit, r.more || len(over) > 0, m.win.size(), now); set {
		m.emit(effect{kind: doTimer, d: d})
	}
	if len(over) > 0 {
		// Claimed again when the window has room.
		back := make([]*held, len(over))
		for i, row := range over {
			back[i] = &held{row: row, token: r.token}
		}
		m.release(back)
	}
	if m.draining {
		m.release(m.win.unemitted())
		m.release(readied)
		return m.pump()
	}
	for _, h := range readied {
		m.ready(h)
	}
	return m.pump()
}

// ready queues h to be handed out, once the loop built its message.
func (m *machine) ready(h *held) {
	m.win.pushReady(h)
	m.emit(effect{kind: doPrepare, h: h})
}

// next is the row to hand out next, or nil: none is ready, draining, or
// the relay's last beat may have expired (other relays may be taking its
// rows over).
func (m *machine) next() *held {
	if m.draining || !m.alive {
		return nil
	}
	return m.win.next()
}

// heartbeat: the relay's standing before a hand-out: lapses found so far,
// and whether its last beat still keeps it alive. A new lapse (the relay
// was declared dead: other relays may have taken any row of its window
// over, and may be publishing them) gives back every row not handed to
// the destination: those not emitted and those emitted whose handler has
// not begun (sealed, they can no longer be published; see unhandled). The
// give-back is fenced, so it changes only the rows still its own, which
// are claimable again at once. What it had handed out goes on: its
// duplicates are those sends, never the rest of its window.
func (m *machine) heartbeat(lapses int64, alive bool) []effect {
	m.begin()
	m.alive = alive
	if lapses == m.lapses {
		return m.pump()
	}
	m.lapses = lapses
	if m.draining {
		return m.pump() // giving back everything anyway
	}
	back := m.win.unhanded()
	if out := m.emitted(); len(out) > 0 {
		m.lapseBack, m.lapseSeal = back, true
		m.emit(effect{kind: doSeal, hs: out})
		return m.pump()
	}
	m.giveBackLapsed(back)
	return m.pump()
}

// giveBackLapsed logs and releases what a lapse gives back.
func (m *machine) giveBackLapsed(back []*held) {
	if len(back) > 0 {
		m.emit(effect{kind: doLapseLog, n: len(back), got: m.win.size()})
	}
	m.release(back)
}

// handedOut: the row next returned was taken from the channel.
func (m *machine) handedOut() []effect {
	m.begin()
	m.emit(effect{kind: doWatch, h: m.win.popEmitted()})
	return m.pump()
}

// delivered: the verdict on a row handed out. Published, its ack is
// batched and the next row of its key made ready; failed, its fate is
// written (decide) and the rows of its key queued behind it go back, so
// that they do not overtake it. A verdict on a row released meanwhile
// (draining) is dropped.
func (m *machine) delivered(d delivered) []effect {
	m.begin()
	h := d.h
	if !m.win.holds(h) || h.state != emitted {
		return m.pump()
	}
	if w := misuseOf(d); w != 0 {
		m.emit(effect{kind: doWarn, h: h, misuse: w, err: d.verdict.Err})
	}
	dec := decide(d, m.cfg)
	if dec.fate == published {
		m.acks.add(h.token, h.row.ID)
		// While draining no row is queued (drain and claimed give
		// them back), so next is nil then.
		if next := m.win.published(h); next != nil {
			m.ready(next)
		}
		return m.pump()
	}
	// Unavailable attempts were observed as they failed (forwarder.go).
	if k := failureKind(d.verdict); k != observe.FailureUnavailable {
		m.emit(effect{kind: doObserveFailure, h: h, failure: k, err: dec.cause})
	}
	behind := m.win.failed(h)
	m.settling++
	m.emit(effect{kind: doFate, h: h, dec: dec})
	m.release(behind)
	return m.pump()
}

// release gives rows back uncharged, one write per claim token.
func (m *machine) release(hs []*held) {
	if len(hs) == 0 {
		return
	}
	for _, h := range hs {
		h.state = settling
	}
	for _, g := range groupByToken(hs) {
		m.settling++
		m.emit(effect{kind: doRelease, token: g[0].token, hs: g})
	}
}

// flushed: an ack write ended. Rows it did not change had been taken over
// by another relay (their lease had expired).
func (m *machine) flushed(r flushed) []effect {
	m.begin()
	m.acks.flushing = false
	if r.err == nil && r.recorded < len(r.ids) {
		m.emit(effect{kind: doLeaseLost, op: observe.WriteMarkPublished, n: len(r.ids), got: r.recorded})
	}
	m.left(r.ids)
	return m.pump()
}

// settled: a fate or release write ended.
func (m *machine) settled(r settled) []effect {
	m.begin()
	m.settling--
	m.left(r.ids)
	return m.pump()
}

// left: rows whose fate is written leave the window.
func (m *machine) left(ids []int64) {
	m.win.remove(ids)
	m.sched.onSettled()
}

// renewDue: the renewal tick at now. The rows whose lease was set more
// than half a lease ago are renewed, one round at a time.
func (m *machine) renewDue(now time.Time) []effect {
	m.begin()
	if !m.renewing {
		if due := m.win.renewDue(now.Add(-m.cfg.ClaimTimeout / 2)); len(due) > 0 {
			m.renewing = true
			m.emit(effect{kind: doRenew, due: due})
		}
	}
	return m.pump()
}

// renewed: a renewal round ended. A token whose renewal failed keeps its
// rows due, tried again at the next tick, well within the lease.
func (m *machine) renewed(r renewal) []effect {
	m.begin()
	m.renewing = false
	for _, t := range r.tokens {
		if t.err != nil {
			continue
		}
		if t.n < len(t.ids) {
			m.emit(effect{kind: doLeaseLost, op: observe.WriteRenew, n: len(t.ids), got: t.n})
		}
		m.win.renewed(t.ids, r.at)
	}
	return m.pump()
}

// drain: Close, or the end of the Subscribe ctx. The channel closes, the
// rows not handed out go back at once, and the grace for the others
// begins; the rows handed out have their records sealed, and those whose
// handler had not begun go back too (unhandled).
func (m *machine) drain() []effect {
	m.begin()
	m.draining = true
	m.emit(effect{kind: doClose, d: min(closeGrace, m.cfg.ClaimTimeout/2)})
	m.release(m.win.unemitted())
	if out := m.emitted(); len(out) > 0 {
		m.emit(effect{kind: doSeal, hs: out})
	}
	return m.pump()
}

// unhandled: of the rows doSeal named, those whose handler had not begun.
// Sealed, they can no longer be published: they go back at once, so only
// the handlers publishing are waited for (drain), or so that a lapsed
// relay publishes only what it handed out (heartbeat).
func (m *machine) unhandled(hs []*held) []effect {
	m.begin()
	lapse, back := m.lapseSeal, m.lapseBack
	m.lapseSeal, m.lapseBack = false, nil
	for _, h := range hs {
		if m.win.holds(h) && h.state == emitted {
			if lapse {
				m.win.failed(h) // ends its key's chain: nothing is queued behind it now
			}
			back = append(back, h)
		}
	}
	if lapse {
		m.giveBackLapsed(back)
	} else {
		m.release(back)
	}
	return m.pump()
}

// emitted returns the rows handed out and awaiting their verdict, in id
// order.
func (m *machine) emitted() []*held {
	var out []*held
	for _, h := range m.win.held {
		if h.state == emitted {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b *held) int { return cmp.Compare(a.row.ID, b.row.ID) })
	return out
}

// done reports whether a draining machine has nothing left to settle: the
// loop ends.
func (m *machine) done() bool {
	return m.draining && m.win.size() == 0 && !m.sched.claiming && !m.acks.flushing &&
		len(m.acks.pending) == 0 && m.settling == 0 && !m.renewing
}

// leftover is what the loop writes as it ends (the grace is over, or it
// is done): the acks not written yet, and the rows whose claim it gives
// back (handed out, ready or queued; a late verdict is not recorded, so
// the row is published again later: at least once).
func (m *machine) leftover() (acks map[string][]int64, giveBack []*held) {
	for _, h := range m.win.held {
		if h.state == emitted || h.state == ready || h.state == queued {
			giveBack = append(giveBack, h)
		}
	}
	return m.acks.pending, giveBack
}

// groupByToken groups rows by claim token, in the order of first sight. A
// window holds the rows of a few claims, so scanning the groups is enough.
func groupByToken(hs []*held) [][]*held {
	var out [][]*held
next:
	for _, h := range hs {
		for i, g := range out {
			if g[0].token == h.token {
				out[i] = append(g, h)
				continue next
			}
		}
		out = append(out, []*held{h})
	}
	return out
}
