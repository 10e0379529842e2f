package forwarder

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/delivery"
	"github.com/e0a82c8c/watermill-outbox/retry"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// The machine's transitions, one table: each case puts a machine in a
// state, feeds it one event and checks the effects that come out (and,
// where the effects do not show it, the state after). No database, no
// goroutine, no timer: the machine has none.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func machineConfig() config.Config {
	cfg := config.Config{PollingInterval: time.Hour, NotifyInterval: time.Second, ClaimTimeout: time.Minute,
		BatchSize: 10, MaxInFlight: 100, MaxRetryCount: 3, RetryBackoffMin: time.Minute, RetryBackoffMax: time.Minute}
	cfg.SetDefaults()
	return cfg
}

// show renders effects for the table: "claim 10", "ack t1 [1 2]", ...
func show(effs []effect) []string {
	out := make([]string, 0, len(effs))
	ids := func(hs []*held) []int64 {
		out := make([]int64, len(hs))
		for i, h := range hs {
			out[i] = h.row.ID
		}
		return out
	}
	for _, e := range effs {
		var s string
		switch e.kind {
		case doClaim:
			s = fmt.Sprintf("claim %d", e.n)
		case doTimer:
			s = fmt.Sprintf("timer %s", e.d)
		case doPrepare:
			s = fmt.Sprintf("prepare %d", e.h.row.ID)
		case doWatch:
			s = fmt.Sprintf("watch %d", e.h.row.ID)
		case doAck:
			s = fmt.Sprintf("ack %s %v", e.token, e.ids)
		case doFate:
			s = fmt.Sprintf("fate %d %s", e.h.row.ID, [...]string{"published", "retried", "dead", "released"}[e.dec.fate])
		case doRelease:
			s = fmt.Sprintf("release %s %v", e.token, ids(e.hs))
		case doRenew:
			var parts []string
			for token, ids := range e.due {
				parts = append(parts, fmt.Sprintf("%s%v", token, ids))
			}
			slices.Sort(parts)
			s = "renew " + strings.Join(parts, " ")
		case doSeal:
			s = fmt.Sprintf("seal %v", ids(e.hs))
		case doClose:
			s = fmt.Sprintf("close %s", e.d)
		case doWarn:
			s = fmt.Sprintf("warn %d %s", e.h.row.ID, [...]string{"", "acked-failed", "acked-unhandled", "nacked-published"}[e.misuse])
		case doObserveFailure:
			s = fmt.Sprintf("observe %d %s", e.h.row.ID, e.failure)
		case doLeaseLost:
			s = fmt.Sprintf("lease-lost %s %d/%d", e.op, e.got, e.n)
		case doLapseLog:
			s = fmt.Sprintf("lapse-log %d/%d", e.n, e.got)
		default:
			s = fmt.Sprintf("effect %d", e.kind)
		}
		out = append(out, s)
	}
	return out
}

func mrows(ids ...int64) []relaystore.Row {
	out := make([]relaystore.Row, len(ids))
	for i, id := range ids {
		out[i] = relaystore.Row{ID: id, Topic: "t", Payload: []byte("x")}
	}
	return out
}

func mkeyed(key string, ids ...int64) []relaystore.Row {
	out := mrows(ids...)
	for i := range out {
		out[i].PartitionKey = key
	}
	return out
}

// Steps that bring a started machine (its first claim, of 1 row, running)
// into a state.

// claim answers the running claim, asked for limit rows, with rows.
func claim(m *machine, token string, limit int, rows ...relaystore.Row) []effect {
	return m.claimed(claimed{token: token, rows: rows, limit: limit}, t0)
}

// holding: a claim of 10 came back with rows (fewer than asked), ready.
func holding(rows ...relaystore.Row) func(*machine) {
	return func(m *machine) { claim(m, "t1", 10, rows...) }
}

// handOut hands out every ready row.
func handOut(m *machine) {
	for m.next() != nil {
		m.handedOut()
	}
}

// out: rows claimed and all handed out.
func out(rows ...relaystore.Row) func(*machine) {
	return func(m *machine) {
		holding(rows...)(m)
		handOut(m)
	}
}

func then(steps ...func(*machine)) func(*machine) {
	return func(m *machine) {
		for _, s := range steps {
			s(m)
		}
	}
}

func h(m *machine, id int64) *held {
	if h, ok := m.win.held[id]; ok {
		return h
	}
	panic(fmt.Sprintf("row %d not held", id))
}

func ok(m *machine, id int64) delivered {
	return delivered{h: h(m, id), verdict: delivery.Verdict{Recorded: true, Published: true}, acked: true}
}

func failedWith(m *machine, id int64, kind retry.Kind) delivered {
	return delivered{h: h(m, id), verdict: delivery.Verdict{Recorded: true, Kind: kind, Err: errors.New("broker says no")}}
}

func publishedAndAcked(id int64) func(*machine) {
	return func(m *machine) { m.delivered(ok(m, id)) }
}

func draining(m *machine) { m.drain() }

// transition is one case: event in state.
type transition struct {
	event, state string
	fresh        bool // the machine is not started
	setup        func(*machine)
	do           func(*machine) []effect
	want         []string
	after        func(*testing.T, *machine)
}

// transitions lists every (event, state) pair the machine distinguishes,
// by the branches of its event methods; TestMachineCoversEveryTransition
// checks that the table has a case for each, and nothing else.
var transitions = map[string][]string{
	"start":      {"fresh"},
	"timer":      {"idle", "claiming", "window full", "draining"},
	"wake":       {"idle", "claiming", "after claim: re-check"},
	"claimed":    {"failed", "empty", "short, window holds rows", "full", "store says more", "keyless rows", "keyed rows", "over MaxInFlightBytes", "draining", "lapsed while claiming"},
	"handed out": {"ready"},
	"next query": {"nothing ready", "ready, draining"},
	"delivered": {"published", "published, ack write running", "published, key queued behind", "published, draining",
		"transient", "transient, key queued behind", "failed without an error", "budget spent", "permanent", "unavailable",
		"unhandled, acked", "unhandled, nacked", "acked but failed", "nacked but published", "released meanwhile"},
	"flushed":   {"all recorded", "lease lost", "stopped", "more acks pending"},
	"settled":   {"claim running", "short claim waiting", "window was full", "draining, last"},
	"renew due": {"rows due", "none due", "renewing"},
	"renewed":   {"renewed", "failed", "lease lost"},
	"drain":     {"idle", "rows held", "rows of two claims", "claim running", "acks pending"},
	"unhandled": {"still out", "settled meanwhile", "after a lapse"},
	"leftover":  {"grace over"},
	"heartbeat": {"alive", "expired", "beat again", "lapse, nothing held", "lapse, rows not handed out",
		"lapse, rows handed out", "lapse, every row handed out begun", "lapse, draining"},
	"done query": {"running", "draining, busy"},
}

var machineCases = []transition{
	// start
	{event: "start", state: "fresh", fresh: true, do: func(m *machine) []effect { return m.start() },
		want: []string{"timer 1h0m0s", "claim 1"}}, // nothing learnt of row sizes yet: one row

	// timer
	{event: "timer", state: "idle", setup: holding(mrows(1)...), do: (*machine).timer,
		want: []string{"claim 10"}},
	{event: "timer", state: "claiming", do: (*machine).timer, want: []string{},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"timer 1h0m0s", "claim 1"}, show(claim(m, "t1", 1)),
				"the tick is kept: a claim follows the running one")
		}},
	{event: "timer", state: "window full", setup: func(m *machine) {
		m.cfg.MaxInFlight = 4
		claim(m, "t1", 10, mrows(1, 2, 3, 4)...)
	}, do: (*machine).timer, want: []string{},
		after: func(t *testing.T, m *machine) {
			handOut(m)
			m.delivered(ok(m, 1))
			m.delivered(ok(m, 2))
			require.Equal(t, []string{"ack t1 [2]"}, show(m.flushed(flushed{ids: []int64{1}, recorded: 1})), "one row free: below half the window")
			require.Equal(t, []string{"claim 2"}, show(m.flushed(flushed{ids: []int64{2}, recorded: 1})), "half free: the claim resumes")
		}},
	{event: "timer", state: "draining", setup: then(holding(), draining), do: (*machine).timer, want: []string{}},

	// wake
	{event: "wake", state: "idle", setup: holding(), do: func(m *machine) []effect { return m.wake(t0) },
		want: []string{"claim 1"}},
	{event: "wake", state: "claiming", do: func(m *machine) []effect { return m.wake(t0) }, want: []string{},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"timer 1h0m0s", "claim 1"}, show(claim(m, "t1", 1)), "claims again for the commit")
		}},
	{event: "wake", state: "after claim: re-check", setup: holding(), do: func(m *machine) []effect {
		m.wake(t0)
		return m.claimed(claimed{token: "t2", limit: 1}, t0.Add(300*time.Millisecond))
	}, want: []string{"timer 700ms"}}, // NotifyInterval after the wake-up

	// claimed
	{event: "claimed", state: "failed", do: func(m *machine) []effect {
		return m.claimed(claimed{err: errors.New("down"), retryIn: 50 * time.Millisecond}, t0)
	}, want: []string{"timer 50ms"}},
	{event: "claimed", state: "empty", do: func(m *machine) []effect { return claim(m, "t1", 1) },
		want: []string{"timer 1h0m0s"}},
	{event: "claimed", state: "short, window holds rows", do: func(m *machine) []effect { return claim(m, "t1", 10, mrows(1)...) },
		want:  []string{"timer 1h0m0s", "prepare 1"},
		after: func(t *testing.T, m *machine) { require.True(t, m.sched.afterSettle) }},
	{event: "claimed", state: "full", do: func(m *machine) []effect { return claim(m, "t1", 2, mrows(1, 2)...) },
		want: []string{"prepare 1", "prepare 2", "claim 98"}}, // a backlog: the window's room
	{event: "claimed", state: "store says more", do: func(m *machine) []effect {
		return m.claimed(claimed{token: "t1", rows: mrows(1), limit: 10, more: true}, t0)
	}, want: []string{"prepare 1", "claim 99"}},
	{event: "claimed", state: "keyless rows", do: func(m *machine) []effect { return claim(m, "t1", 10, mrows(1, 2)...) },
		want: []string{"timer 1h0m0s", "prepare 1", "prepare 2"}},
	{event: "claimed", state: "keyed rows", do: func(m *machine) []effect {
		return claim(m, "t1", 10, append(mkeyed("k", 1, 2), mkeyed("j", 3)...)...)
	}, want: []string{"timer 1h0m0s", "prepare 1", "prepare 3"},
		after: func(t *testing.T, m *machine) { require.Equal(t, queued, h(m, 2).state) }},
	{event: "claimed", state: "over MaxInFlightBytes", setup: func(m *machine) { m.cfg.MaxInFlightBytes = 2 },
		do:   func(m *machine) []effect { return claim(m, "t1", 1, mrows(1, 2, 3)...) }, // a store that took more than asked
		want: []string{"release t1 [3]", "prepare 1", "prepare 2"}},
	{event: "claimed", state: "draining", setup: draining, do: func(m *machine) []effect {
		return claim(m, "t1", 10, append(mkeyed("k", 1, 2), mrows(3)...)...)
	}, want: []string{"timer 1h0m0s", "release t1 [2]", "release t1 [1 3]"},
		after: func(t *testing.T, m *machine) { require.Nil(t, m.next()) }},

	{event: "claimed", state: "lapsed while claiming", setup: holding(mrows(1)...), do: func(m *machine) []effect {
		m.wake(t0)
		return m.claimed(claimed{token: "t2", rows: mrows(2, 3), limit: 10, lapsed: true}, t0)
	}, want: []string{"release t2 [2 3]", "claim 99"}, // others may hold them: back, and claimed again
		after: func(t *testing.T, m *machine) { require.Equal(t, 1, m.win.size()) }},

	// handed out
	{event: "handed out", state: "ready", setup: holding(mrows(1, 2)...), do: (*machine).handedOut,
		want:  []string{"watch 1"},
		after: func(t *testing.T, m *machine) { require.Equal(t, int64(2), m.next().row.ID) }},

	// next (a query: the row the loop offers on the channel)
	{event: "next query", state: "nothing ready", setup: holding(), do: func(m *machine) []effect { return nil }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Nil(t, m.next()) }},
	{event: "next query", state: "ready, draining", setup: then(holding(mrows(1)...), draining),
		do: func(m *machine) []effect { return nil }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Nil(t, m.next(), "nothing is handed out while draining") }},

	// delivered
	{event: "delivered", state: "published", setup: out(mrows(1)...), do: func(m *machine) []effect { return m.delivered(ok(m, 1)) },
		want: []string{"ack t1 [1]"}},
	{event: "delivered", state: "published, ack write running", setup: then(out(mrows(1, 2)...), publishedAndAcked(1)),
		do: func(m *machine) []effect { return m.delivered(ok(m, 2)) }, want: []string{},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"claim 99", "ack t1 [2]"}, show(m.flushed(flushed{ids: []int64{1}, recorded: 1})),
				"batched behind the write (and the short claim's follow-up: rows left the window)")
		}},
	{event: "delivered", state: "published, key queued behind", setup: out(mkeyed("k", 1, 2)...),
		do: func(m *machine) []effect { return m.delivered(ok(m, 1)) }, want: []string{"prepare 2", "ack t1 [1]"}},
	{event: "delivered", state: "published, draining", setup: then(out(mkeyed("k", 1, 2)...), draining),
		do: func(m *machine) []effect { return m.delivered(ok(m, 1)) }, want: []string{"ack t1 [1]"},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, settling, h(m, 2).state, "the row queued behind went back as the drain began")
			require.Empty(t, m.win.chains)
		}},
	{event: "delivered", state: "transient", setup: out(mrows(1)...),
		do:   func(m *machine) []effect { return m.delivered(failedWith(m, 1, retry.Transient)) },
		want: []string{"observe 1 transient", "fate 1 retried"}},
	{event: "delivered", state: "transient, key queued behind", setup: out(mkeyed("k", 1, 2, 3)...),
		do:   func(m *machine) []effect { return m.delivered(failedWith(m, 1, retry.Transient)) },
		want: []string{"observe 1 transient", "fate 1 retried", "release t1 [2 3]"}}, // they must not overtake it
	{event: "delivered", state: "failed without an error", setup: out(mrows(1)...), do: func(m *machine) []effect {
		effs := m.delivered(delivered{h: h(m, 1), verdict: delivery.Verdict{Recorded: true, Kind: retry.Transient}})
		require.EqualError(nil, effs[len(effs)-1].dec.cause, "transient")
		return effs
	}, want: []string{"observe 1 transient", "fate 1 retried"}},
	{event: "delivered", state: "budget spent", setup: func(m *machine) {
		r := mrows(1)
		r[0].Attempts = 2
		out(r...)(m)
	}, do: func(m *machine) []effect { return m.delivered(failedWith(m, 1, retry.Transient)) },
		want: []string{"observe 1 transient", "fate 1 dead"}},
	{event: "delivered", state: "permanent", setup: out(mrows(1)...),
		do:   func(m *machine) []effect { return m.delivered(failedWith(m, 1, retry.Permanent)) },
		want: []string{"observe 1 permanent", "fate 1 dead"}},
	{event: "delivered", state: "unavailable", setup: out(mrows(1)...),
		do:   func(m *machine) []effect { return m.delivered(failedWith(m, 1, retry.Unavailable)) },
		want: []string{"fate 1 released"}}, // observed as it failed, by the handler
	{event: "delivered", state: "unhandled, acked", setup: out(mrows(1)...),
		do:   func(m *machine) []effect { return m.delivered(delivered{h: h(m, 1), acked: true}) },
		want: []string{"warn 1 acked-unhandled", "observe 1 unhandled", "fate 1 retried"}},
	{event: "delivered", state: "unhandled, nacked", setup: out(mrows(1)...),
		do:   func(m *machine) []effect { return m.delivered(delivered{h: h(m, 1)}) },
		want: []string{"observe 1 unhandled", "fate 1 retried"}},
	{event: "delivered", state: "acked but failed", setup: out(mrows(1)...), do: func(m *machine) []effect {
		d := failedWith(m, 1, retry.Transient)
		d.acked = true
		return m.delivered(d)
	}, want: []string{"warn 1 acked-failed", "observe 1 transient", "fate 1 retried"}},
	{event: "delivered", state: "nacked but published", setup: out(mrows(1)...), do: func(m *machine) []effect {
		d := ok(m, 1)
		d.acked = false
		return m.delivered(d)
	}, want: []string{"warn 1 nacked-published", "ack t1 [1]"}},
	{event: "delivered", state: "released meanwhile", setup: then(out(mrows(1)...), draining), do: func(m *machine) []effect {
		d := ok(m, 1)
		m.unhandled([]*held{d.h})
		return m.delivered(d)
	}, want: []string{}},

	// flushed
	{event: "flushed", state: "all recorded", setup: then(out(mrows(1, 2)...), publishedAndAcked(1)),
		do:    func(m *machine) []effect { return m.flushed(flushed{ids: []int64{1}, recorded: 1}) },
		want:  []string{"claim 99"}, // rows left: the short claim's follow-up
		after: func(t *testing.T, m *machine) { require.Equal(t, 1, m.win.size()) }},
	{event: "flushed", state: "lease lost", setup: then(out(mrows(1)...), publishedAndAcked(1)),
		do:   func(m *machine) []effect { return m.flushed(flushed{ids: []int64{1}}) },
		want: []string{"lease-lost mark_published 0/1", "claim 100"}},
	{event: "flushed", state: "stopped", setup: then(out(mrows(1)...), publishedAndAcked(1)),
		do: func(m *machine) []effect {
			return m.flushed(flushed{ids: []int64{1}, err: errors.New("stopped")})
		}, want: []string{"claim 100"}}, // no lease lost: the write never succeeded
	{event: "flushed", state: "more acks pending", setup: func(m *machine) {
		out(mrows(1)...)(m)
		m.wake(t0)
		claim(m, "t2", 10, mrows(2)...)
		handOut(m)
		m.delivered(ok(m, 1))
		m.delivered(ok(m, 2))
	}, do: func(m *machine) []effect { return m.flushed(flushed{ids: []int64{1}, recorded: 1}) },
		want: []string{"claim 99", "ack t2 [2]"}}, // the next token's acks; and the short claim's follow-up

	// settled
	{event: "settled", state: "claim running", setup: func(m *machine) {
		claim(m, "t1", 2, mrows(1, 2)...) // full: the backlog's claim runs
		handOut(m)
		m.delivered(failedWith(m, 1, retry.Transient))
	}, do: func(m *machine) []effect { return m.settled(settled{ids: []int64{1}}) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Equal(t, 1, m.win.size()) }},
	{event: "settled", state: "short claim waiting", setup: then(out(mrows(1)...), func(m *machine) {
		m.delivered(failedWith(m, 1, retry.Transient))
	}), do: func(m *machine) []effect { return m.settled(settled{ids: []int64{1}}) },
		want: []string{"claim 100"}}, // per-key order: the short claim may have missed rows behind the held ones
	{event: "settled", state: "window was full", setup: func(m *machine) {
		m.cfg.MaxInFlight = 2
		claim(m, "t1", 10, mrows(1, 2)...)
		m.timer()
		handOut(m)
		m.delivered(failedWith(m, 1, retry.Transient))
	}, do: func(m *machine) []effect { return m.settled(settled{ids: []int64{1}}) },
		want: []string{"claim 1"}}, // resumed: the room freed
	{event: "settled", state: "draining, last", setup: then(out(mrows(1)...), draining),
		do: func(m *machine) []effect {
			m.unhandled([]*held{h(m, 1)})
			return m.settled(settled{ids: []int64{1}})
		}, want: []string{},
		after: func(t *testing.T, m *machine) { require.True(t, m.done()) }},

	// renew due
	{event: "renew due", state: "rows due", setup: func(m *machine) {
		claim(m, "t1", 10, mrows(1, 2)...)
		m.wake(t0)
		claim(m, "t2", 10, mrows(3)...)
	}, do: func(m *machine) []effect { return m.renewDue(t0.Add(31 * time.Second)) },
		want: []string{"renew t1[1 2] t2[3]"}},
	{event: "renew due", state: "none due", setup: holding(mrows(1)...),
		do: func(m *machine) []effect { return m.renewDue(t0.Add(30 * time.Second)) }, want: []string{}}, // half the lease, not more
	{event: "renew due", state: "renewing", setup: then(holding(mrows(1)...), func(m *machine) { m.renewDue(t0.Add(time.Minute)) }),
		do: func(m *machine) []effect { return m.renewDue(t0.Add(2 * time.Minute)) }, want: []string{}},

	// renewed
	{event: "renewed", state: "renewed", setup: then(holding(mrows(1)...), func(m *machine) { m.renewDue(t0.Add(time.Minute)) }),
		do: func(m *machine) []effect {
			return m.renewed(renewal{at: t0.Add(time.Minute), tokens: []renewedToken{{ids: []int64{1}, n: 1}}})
		}, want: []string{},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{}, show(m.renewDue(t0.Add(time.Minute+30*time.Second))), "the lease was set again")
		}},
	{event: "renewed", state: "failed", setup: then(holding(mrows(1)...), func(m *machine) { m.renewDue(t0.Add(time.Minute)) }),
		do: func(m *machine) []effect {
			return m.renewed(renewal{at: t0.Add(time.Minute), tokens: []renewedToken{{ids: []int64{1}, err: errors.New("down")}}})
		}, want: []string{},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"renew t1[1]"}, show(m.renewDue(t0.Add(time.Minute+time.Second))), "tried again at the next tick")
		}},
	{event: "renewed", state: "lease lost", setup: then(holding(mrows(1, 2)...), func(m *machine) { m.renewDue(t0.Add(time.Minute)) }),
		do: func(m *machine) []effect {
			return m.renewed(renewal{at: t0.Add(time.Minute), tokens: []renewedToken{{ids: []int64{1, 2}, n: 1}}})
		}, want: []string{"lease-lost renew 1/2"}},

	// drain
	{event: "drain", state: "idle", setup: func(m *machine) { claim(m, "t1", 1) }, do: (*machine).drain,
		want:  []string{"close 5s"}, // the grace: 5s, or half the lease if less
		after: func(t *testing.T, m *machine) { require.True(t, m.done()) }},
	{event: "drain", state: "rows held", setup: func(m *machine) {
		claim(m, "t1", 10, append(mkeyed("k", 1, 2), mrows(3, 4)...)...)
		m.handedOut() // 1
		m.handedOut() // 3
	}, do: (*machine).drain,
		want: []string{"close 5s", "release t1 [4 2]", "seal [1 3]"}},
	{event: "drain", state: "rows of two claims", setup: func(m *machine) {
		claim(m, "t1", 10, mkeyed("k", 1, 2)...)
		m.wake(t0)
		claim(m, "t2", 10, append(mrows(3), mkeyed("k", 4)...)...)
	}, do: (*machine).drain,
		want: []string{"close 5s", "release t1 [1 2]", "release t2 [3 4]"}}, // one write per claim token
	{event: "drain", state: "claim running", do: (*machine).drain, want: []string{"close 5s"},
		after: func(t *testing.T, m *machine) {
			require.False(t, m.done(), "the claim's rows are to be given back")
			require.Equal(t, []string{"release t1 [1]"}, show(claim(m, "t1", 10, mrows(1)...))[1:])
			require.Equal(t, []string{}, show(m.settled(settled{ids: []int64{1}})))
			require.True(t, m.done())
		}},
	{event: "drain", state: "acks pending", setup: then(out(mrows(1, 2)...), publishedAndAcked(1), publishedAndAcked(2)),
		do: (*machine).drain, want: []string{"close 5s"},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"ack t1 [2]"}, show(m.flushed(flushed{ids: []int64{1}, recorded: 1})), "acks are still written")
			require.False(t, m.done())
			m.flushed(flushed{ids: []int64{2}, recorded: 1})
			require.True(t, m.done())
		}},

	// unhandled
	{event: "unhandled", state: "still out", setup: then(out(mrows(1, 2)...), draining),
		do:   func(m *machine) []effect { return m.unhandled([]*held{h(m, 1), h(m, 2)}) },
		want: []string{"release t1 [1 2]"}},
	{event: "unhandled", state: "after a lapse", setup: then(out(mkeyed("k", 1, 2)...), func(m *machine) { m.heartbeat(1, true) }),
		do:   func(m *machine) []effect { return m.unhandled([]*held{h(m, 1)}) },
		want: []string{"lapse-log 2/2", "release t1 [2 1]"}},
	{event: "unhandled", state: "settled meanwhile", setup: then(out(mrows(1, 2)...), draining, publishedAndAcked(1)),
		do:   func(m *machine) []effect { return m.unhandled([]*held{h(m, 1), h(m, 2)}) },
		want: []string{"release t1 [2]"}},

	// leftover
	{event: "leftover", state: "grace over", setup: then(holding(append(mkeyed("k", 1, 2), mrows(3, 4)...)...), func(m *machine) {
		m.handedOut() // 1
		m.handedOut() // 3
		m.delivered(ok(m, 3))
		m.wake(t0)
		claim(m, "t2", 10, mrows(5)...)
		m.handedOut() // 4
		m.handedOut() // 5
		m.delivered(ok(m, 5))
		m.drain()
	}), do: func(m *machine) []effect { return nil }, want: []string{},
		after: func(t *testing.T, m *machine) {
			acks, back := m.leftover()
			require.Equal(t, map[string][]int64{"t2": {5}}, acks, "t1's ack is being written")
			var ids []int64
			for _, h := range back {
				ids = append(ids, h.row.ID)
			}
			require.ElementsMatch(t, []int64{1, 4}, ids, "handed out: their claims go back (2 is being released already)")
		}},

	// heartbeat (before each hand-out: lapses found, and whether the last
	// beat still keeps the relay alive)
	{event: "heartbeat", state: "alive", setup: holding(mrows(1)...),
		do: func(m *machine) []effect { return m.heartbeat(0, true) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Equal(t, int64(1), m.next().row.ID) }},
	{event: "heartbeat", state: "expired", setup: holding(mrows(1)...),
		do: func(m *machine) []effect { return m.heartbeat(0, false) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Nil(t, m.next(), "others may be taking its rows over") }},
	{event: "heartbeat", state: "beat again", setup: then(holding(mrows(1)...), func(m *machine) { m.heartbeat(0, false) }),
		do: func(m *machine) []effect { return m.heartbeat(0, true) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Equal(t, int64(1), m.next().row.ID) }},
	{event: "heartbeat", state: "lapse, nothing held", setup: holding(),
		do: func(m *machine) []effect { return m.heartbeat(1, true) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Equal(t, int64(1), m.lapses) }},
	{event: "heartbeat", state: "lapse, rows not handed out", setup: holding(append(mkeyed("k", 1, 2), mrows(3)...)...),
		do:   func(m *machine) []effect { return m.heartbeat(1, true) },
		want: []string{"lapse-log 3/3", "release t1 [1 3 2]"},
		after: func(t *testing.T, m *machine) {
			require.Nil(t, m.next())
			require.Empty(t, m.win.chains, "the keys are free: their rows come back in a later claim")
		}},
	{event: "heartbeat", state: "lapse, rows handed out", setup: then(holding(append(mkeyed("k", 1, 2), mrows(3, 4)...)...), func(m *machine) {
		m.handedOut() // 1
		m.handedOut() // 3
	}), do: func(m *machine) []effect { return m.heartbeat(1, true) },
		want: []string{"seal [1 3]"}, // the rest waits for the seal: one give-back
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"lapse-log 3/4", "release t1 [4 2 1]"}, show(m.unhandled([]*held{h(m, 1)})),
				"3's handler had begun: it goes on (its duplicate)")
			require.Empty(t, m.win.chains)
		}},
	{event: "heartbeat", state: "lapse, every row handed out begun", setup: then(holding(mkeyed("k", 1, 2)...), func(m *machine) {
		m.handedOut() // 1
	}), do: func(m *machine) []effect { return m.heartbeat(1, true) },
		want: []string{"seal [1]"},
		after: func(t *testing.T, m *machine) {
			require.Equal(t, []string{"lapse-log 1/2", "release t1 [2]"}, show(m.unhandled(nil)),
				"the seal found no row unhandled: the rest goes back all the same")
		}},
	{event: "heartbeat", state: "lapse, draining", setup: then(out(mrows(1)...), draining),
		do: func(m *machine) []effect { return m.heartbeat(1, true) }, want: []string{},
		after: func(t *testing.T, m *machine) { require.Equal(t, int64(1), m.lapses) }},

	// done
	{event: "done query", state: "running", setup: func(m *machine) { claim(m, "t1", 1) }, do: func(m *machine) []effect { return nil },
		want: []string{}, after: func(t *testing.T, m *machine) { require.False(t, m.done()) }},
	{event: "done query", state: "draining, busy", setup: then(out(mrows(1)...), draining), do: func(m *machine) []effect { return nil },
		want: []string{}, after: func(t *testing.T, m *machine) { require.False(t, m.done(), "row 1 in the handler") }},
}

func TestMachineTransitions(t *testing.T) {
	t.Parallel()
	for _, c := range machineCases {
		t.Run(c.event+"/"+c.state, func(t *testing.T) {
			m := newMachine(machineConfig(), 0)
			if !c.fresh {
				m.start()
			}
			if c.setup != nil {
				c.setup(m)
			}
			got := show(c.do(m))
			require.Equal(t, c.want, got)
			if c.after != nil {
				c.after(t, m)
			}
		})
	}
}

// TestMachineCoversEveryTransition: the table has one case for every
// (event, state) pair in transitions, and no other.
func TestMachineCoversEveryTransition(t *testing.T) {
	t.Parallel()
	seen := map[string]int{}
	for _, c := range machineCases {
		seen[c.event+"/"+c.state]++
	}
	for event, states := range transitions {
		for _, state := range states {
			key := event + "/" + state
			require.Equal(t, 1, seen[key], "cases for %s", key)
			delete(seen, key)
		}
	}
	require.Empty(t, seen, "cases of transitions not listed")
}

// A retried row is due after the backoff of its attempt.
func TestMachineRetryDelay(t *testing.T) {
	t.Parallel()
	m := newMachine(machineConfig(), 0)
	m.start()
	out(mrows(1)...)(m)
	effs := m.delivered(failedWith(m, 1, retry.Transient))
	i := slices.IndexFunc(effs, func(e effect) bool { return e.kind == doFate })
	require.Equal(t, retried, effs[i].dec.fate)
	require.GreaterOrEqual(t, effs[i].dec.delay, 30*time.Second, "RetryBackoffMin, jittered")
	require.LessOrEqual(t, effs[i].dec.delay, time.Minute)
}
