package forwarder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// liveness is a Subscriber's place in the store's relay registry
// (watermilloutbox.RelayRegistry): it beats every RelayTimeout/3 so that
// other relays know it is alive, names the relay in its claims, and tells
// the operator when this relay was declared dead or took rows over from a
// relay that was. A store without a registry leaves it idle: a dead
// relay's rows then come back when their lease ends.
type liveness struct {
	reg     outbox.RelayRegistry // nil: the store has none
	id      string
	timeout time.Duration
	logger  watermill.LoggerAdapter

	stopOnce   sync.Once
	stop, done chan struct{}

	mu              sync.Mutex
	started, closed bool
	taken           map[string]int         // rows taken over per dead relay, not yet logged
	timers          map[string]*time.Timer // the pending log line per dead relay
	logged          map[string]bool        // dead relays already logged
}

func newLiveness(store outbox.Store, timeout time.Duration, logger watermill.LoggerAdapter) *liveness {
	l := &liveness{timeout: timeout, logger: logger, stop: make(chan struct{}), done: make(chan struct{})}
	if reg, ok := store.(outbox.RelayRegistry); ok {
		l.reg, l.id = reg, newRelayID()
	}
	return l
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
	l.started = true
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
	b, err := l.reg.Beat(ctx, l.id, l.timeout)
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
			"and the messages it was publishing may go out twice. It has registered again", nil, fields)
	}
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
func takenOver(c outbox.Claimed) int {
	n := 0
	for _, k := range c.TakenOver {
		n += k
	}
	return n
}
