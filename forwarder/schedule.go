package forwarder

import (
	"time"

	"github.com/e0a82c8c/watermill-outbox/config"
)

// schedule decides when a subscription claims. A claim is due after a poll
// interval, after a wake-up (a commit notification), while a backlog
// drains (the last claim came back full), and again after a failed claim's
// backoff; it starts once the window has room. It is part of the machine:
// it holds no timer, but says when the loop's claim timer is to fire next
// (a timer effect), and is told when it fired.
type schedule struct {
	poll, notify time.Duration
	batch        int // config BatchSize
	threshold    int // the room a claim waits for

	due      bool // a claim should start as soon as the window allows
	claiming bool // a claim is running
	backlog  bool // the last claim came back full or said more rows are due
	// afterSettle: the last claim came back short while the window held
	// rows. With per-key order a key's next rows are claimable only once
	// its rows in this window are acked, so a claim is due when the window
	// next gives rows up (measured: 100 keys × 20 rows drained at 195/s,
	// a poll interval per step, without it).
	afterSettle bool
	// A wake-up asked for the claim now running (or about to): look once
	// more one notify interval after the wake-up arrived, for the commits
	// whose publishers skipped their NOTIFY (see the Publisher's
	// coalescing).
	woken, recheck bool
	wokeAt         time.Time
}

func newSchedule(cfg config.Config) *schedule {
	return &schedule{
		poll:   cfg.PollingInterval,
		notify: cfg.NotifyInterval,
		batch:  cfg.BatchSize,
		// Half a batch, or half the window if that is smaller.
		threshold: max(1, min(cfg.BatchSize, cfg.MaxInFlight)/2),
		// Claim at once on start; the timer is reset after each claim.
		due: true,
	}
}

// onTimer: the poll interval, a re-check or a retry delay has passed.
func (s *schedule) onTimer() { s.due = true }

// onWake: a commit notification arrived.
func (s *schedule) onWake(now time.Time) {
	s.due, s.woken, s.wokeAt = true, true, now
}

// ready reports whether a claim should start now, given the free room in
// the window and how many rows the empty window holds (fewer than
// MaxInFlight when MaxInFlightBytes binds): it waits until half a batch,
// or half the capacity, fits, so a nearly full window does not claim a row
// at a time.
func (s *schedule) ready(free, capacity int) bool {
	return s.due && !s.claiming && free >= min(s.threshold, max(1, capacity/2))
}

// start marks a claim as started and returns how many rows it may take:
// BatchSize, or, while a backlog drains, as many as the window has room
// for. A claim costs about the same for 100 rows as for 1,000 (its round
// trips and its commit dominate), so larger claims drain a backlog faster,
// and an idle relay still claims small batches.
func (s *schedule) start(free int) int {
	s.due, s.claiming = false, true
	s.recheck, s.woken = s.recheck || s.woken, false
	if s.backlog {
		return min(free, config.MaxBatchSize)
	}
	return min(s.batch, free)
}

// onClaimed: the claim returned got rows out of the limit it asked, and
// more when the store said more rows may be due; held is the window's size
// with them. It returns when the claim timer is to fire next, if it is to
// be set.
func (s *schedule) onClaimed(got, limit int, more bool, held int, now time.Time) (timer time.Duration, set bool) {
	s.claiming = false
	s.backlog = more || got > 0 && got >= limit
	s.afterSettle = !s.backlog && held > 0
	switch {
	case s.backlog:
		s.due = true
		return 0, false
	case s.recheck:
		s.recheck = false
		return max(0, min(s.notify, s.poll)-now.Sub(s.wokeAt)), true
	default:
		return s.poll, true
	}
}

// onSettled: rows left the window (acked, retried, dead or released).
func (s *schedule) onSettled() {
	if s.afterSettle {
		s.afterSettle = false
		s.due, s.backlog = true, true
	}
}

// onClaimFailed: the claim failed; the timer is set to try again after
// the database backoff.
func (s *schedule) onClaimFailed() { s.claiming = false }
