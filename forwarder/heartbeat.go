package forwarder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/e0a82c8c/watermill-outbox/internal/observe"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// liveness is a Subscriber's place in the store's relay registry
// (relaystore.RelayRegistry): it beats every RelayTimeout/3 so that
// other relays know it is alive, names the relay in its claims, and tells
// the operator when this relay was declared dead or took rows over from a
// relay that was. A store without a registry leaves it idle: a dead
// relay's rows then come back when their lease ends.
type liveness struct {
	reg     relaystore.RelayRegistry // nil: the store has none
	id      string
	timeout time.Duration
	logger  watermill.LoggerAdapter

	stopOnce   sync.Once
	stop, done chan struct{}

	obs     observe.Observer // nil: none
	handler string

	mu              sync.Mutex
	started, closed bool
	startedAt       time.Time
	taken           map[string]int         // rows taken over per dead relay, not yet logged
	timers          map[string]*time.Timer // the pending log line per dead relay
	logged          map[string]bool        // dead relays already logged
	beaten          chan struct{}          // closed and replaced by each beat that lands
	lastErr         error                  // the last beat's error
	lastLapse       time.Time

	// The last beat that landed, read by the subscriptions before each
	// hand-out: sent is when it was sent (unix ns, 0 before the first), ttl
	// how long it keeps the relay alive. lapses counts the beats that found
	// the relay declared dead; it is raised before sent is stored, so whoever
	// reads a fresh sent and then lapses sees the lapse that came with it.
	sent, ttl, lapses atomic.Int64
}

func newLiveness(store relaystore.Store, timeout time.Duration, logger watermill.LoggerAdapter, obs observe.Observer, handler string) *liveness {
	l := &liveness{timeout: timeout, logger: logger, obs: obs, handler: handler,
		stop: make(chan struct{}), done: make(chan struct{}), beaten: make(chan struct{})}
	if reg, ok := store.(relaystore.RelayRegistry); ok {
		l.reg, l.id = reg, newRelayID()
	}
	return l
}

// Heartbeat is a relay's standing in the store's relay registry
// (relaystore.RelayRegistry), as its own beats found it: what a
// health check of this relay can tell. It cannot tell whether other relays
// are alive; the rows they hold past their heartbeat (Stats' Orphaned,
// outbox_orphaned) and the takeover log line of the relay that takes them
// over do.
type Heartbeat struct {
	// Relay is the id the relay beats and claims under; "" when the store
	// has no registry, and then the rest is zero.
	Relay string
	// Timeout is how long a beat keeps the relay alive: RelayTimeout, or
	// longer where the store needs it (15 s at least on SQLite).
	Timeout time.Duration
	// Last is when the last beat that landed was sent (local clock); zero
	// before the first.
	Last time.Time
	// Expired: no beat has landed for longer than Timeout (since Last, or
	// since the relay started beating when none has). Other relays may take
	// its rows over; the relay hands out no row meanwhile.
	Expired bool
	// Lapses counts the beats that found the relay declared dead (its
	// previous beat had expired): each time it gave back the rows it had
	// not handed out yet, and registered again. LastLapse is when the last
	// of them landed.
	Lapses    int
	LastLapse time.Time
	// Err is the last beat's error; nil when it landed.
	Err error
}

// heartbeat reports the relay's Heartbeat at now.
func (l *liveness) heartbeat(now time.Time) Heartbeat {
	if l.reg == nil {
		return Heartbeat{}
	}
	l.mu.Lock()
	started, since, err, lapse := l.started, l.startedAt, l.lastErr, l.lastLapse
	l.mu.Unlock()
	hb := Heartbeat{Relay: l.id, Timeout: l.timeout, Lapses: int(l.lapses.Load()), LastLapse: lapse, Err: err}
	if sent := l.sent.Load(); sent != 0 {
		hb.Last, hb.Timeout, since = time.Unix(0, sent), time.Duration(l.ttl.Load()), time.Unix(0, sent)
	}
	hb.Expired = started && now.Sub(since) > hb.Timeout
	return hb
}

// current reports, for a hand-out at now, how many lapses the relay has
// found, whether its last beat still keeps it alive, and a channel closed
// when the next beat lands. Before its first beat a relay is not in the
// registry, so no other relay can take its rows over: current.
func (l *liveness) current(now time.Time) (lapses int64, alive bool, beaten <-chan struct{}) {
	if l.reg == nil {
		return 0, true, nil
	}
	l.mu.Lock()
	beaten = l.beaten
	l.mu.Unlock()
	sent := l.sent.Load()
	alive = sent == 0 || now.Sub(time.Unix(0, sent)) <= time.Duration(l.ttl.Load())
	return l.lapses.Load(), alive, beaten
}

// lapseCount is how many lapses the relay has found.
func (l *liveness) lapseCount() int64 { return l.lapses.Load() }

// awaitAlive waits, while the relay's last beat no longer keeps it alive,
// for the next beat to land, and returns the lapses found by then; false
// when ctx ended first.
func (l *liveness) awaitAlive(ctx context.Context) (lapses int64, ok bool) {
	for {
		n, alive, beaten := l.current(time.Now())
		if alive {
			return n, true
		}
		select {
		case <-beaten:
		case <-ctx.Done():
			return n, false
		}
	}
}

// newRelayID names this relay in the registry and in the rows it claims:
// host, process and a random part (one process may run several relays),
// within the registry's 64 characters of letters, digits and . _ : -.
func newRelayID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, host)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b)
	return host[:min(len(host), 64-len(suffix))] + suffix
}

// relay is the id claims name, "" without a registry.
func (l *liveness) relay() string { return l.id }

// start begins beating, once, unless closed; Subscribe calls it.
func (l *liveness) start() {
	if l.reg == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started || l.closed {
		return
	}
	l.started, l.startedAt = true, time.Now()
	go l.run()
}

func (l *liveness) run() {
	defer close(l.done)
	tick := time.NewTicker(max(l.timeout/3, time.Millisecond))
	defer tick.Stop()
	failing := false
	for {
		l.beat(&failing)
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
	}
}

// beat runs one heartbeat. A beat slower than the timeout is as good as
// none, so it is bounded by it.
func (l *liveness) beat(failing *bool) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	sent := time.Now()
	b, err := l.reg.Beat(ctx, l.id, l.timeout)
	l.landed(sent, b, err)
	fields := watermill.LogFields{"relay": l.id, "relay_timeout": l.timeout.String()}
	if err != nil {
		if !*failing {
			l.logger.Error("Outbox relay heartbeat failed; if it keeps failing for the relay timeout, other relays take this relay's rows over",
				err, fields)
		}
		*failing = true
		return
	}
	if *failing {
		l.logger.Info("Outbox relay heartbeat works again", fields)
	}
	*failing = false
	if b.Lapsed {
		warn(l.logger, "Outbox relay was declared dead: its heartbeat had expired (the process was paused, or cut off from the database, "+
			"for longer than the relay timeout). Other relays may have taken its rows over; its writes for those rows are rejected, "+
			"it gives back the rows it had not handed out yet, and the messages it was publishing may go out twice. It has registered again",
			nil, fields)
	}
}

// landed records a beat's outcome for the subscriptions, the health check
// and the Observer, and wakes whoever waits for a beat.
func (l *liveness) landed(sent time.Time, b relaystore.Beat, err error) {
	if l.obs != nil {
		l.obs.ObserveBeat(observe.BeatEvent{Handler: l.handler, Relay: l.id, Sent: sent, Duration: time.Since(sent), Lapsed: b.Lapsed, Err: err})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
	if err != nil {
		return
	}
	if b.Lapsed {
		l.lastLapse = time.Now()
		l.lapses.Add(1) // before sent: see liveness.sent
	}
	ttl := b.TTL
	if ttl <= 0 {
		ttl = l.timeout
	}
	l.ttl.Store(int64(ttl))
	l.sent.Store(sent.UnixNano())
	close(l.beaten)
	l.beaten = make(chan struct{})
}

// close stops beating after the subscriptions ended (they released their
// rows) and marks the relay gone, so that a row whose release failed is
// claimable at once.
func (l *liveness) close() {
	l.stopOnce.Do(func() {
		l.mu.Lock()
		started := l.started
		l.closed = true
		l.mu.Unlock()
		if started {
			close(l.stop)
			<-l.done
		}
		l.flush()
		if !started {
			return
		}
		ctx, cancel := workCtx()
		defer cancel()
		if err := l.reg.Leave(ctx, l.id); err != nil {
			l.logger.Error("Outbox relay could not leave the relay registry; other relays take its rows over after the relay timeout",
				err, watermill.LogFields{"relay": l.id})
		}
	})
}

// tookOver notes rows a claim took from relays declared dead, and logs,
// once per dead relay, how many: a takeover spans several claims, so the
// line waits one relay timeout for the rest.
func (l *liveness) tookOver(from map[string]int) {
	if len(from) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taken == nil {
		l.taken, l.timers, l.logged = map[string]int{}, map[string]*time.Timer{}, map[string]bool{}
	}
	for relay, n := range from {
		if l.logged[relay] {
			continue
		}
		l.taken[relay] += n
		if l.timers[relay] == nil {
			l.timers[relay] = time.AfterFunc(l.timeout, func() { l.logTakeover(relay) })
		}
	}
}

func (l *liveness) logTakeover(relay string) {
	l.mu.Lock()
	n := l.taken[relay]
	delete(l.taken, relay)
	delete(l.timers, relay)
	l.logged[relay] = true
	l.mu.Unlock()
	l.logger.Info("Outbox relay took over rows from a relay declared dead (its heartbeat expired before their lease ended); "+
		"they may be published twice", watermill.LogFields{"relay": l.id, "dead_relay": relay, "rows": n})
}

// flush logs the takeovers still waiting for their line.
func (l *liveness) flush() {
	l.mu.Lock()
	var pending []string
	for relay, t := range l.timers {
		if t.Stop() {
			pending = append(pending, relay)
		}
	}
	l.mu.Unlock()
	for _, relay := range pending {
		l.logTakeover(relay)
	}
}

// takenOver is how many of a claim's rows were taken from dead relays.
func takenOver(c relaystore.Claimed) int {
	n := 0
	for _, k := range c.TakenOver {
		n += k
	}
	return n
}
