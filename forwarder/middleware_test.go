package forwarder_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
	"github.com/e0a82c8c/watermill-outbox/internal/testenv"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// ackOnError is a hand-written middleware that swallows handler errors, as
// many do: the router acks every message.
func ackOnError(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		_, _ = h(msg)
		return nil, nil
	}
}

// runRouter runs router until the test ends, then closes it before the
// forwarder (the shutdown order docs/guide.md gives).
func runRouter(t *testing.T, router *message.Router, f *forwarder.Forwarder) {
	t.Helper()
	t.Cleanup(func() { require.NoError(t, f.Close()) }) // runs after the router's
	testenv.Start(t, "router", router)
}

// TestRouterMiddlewaresCannotLoseRows: with the forwarder on a caller's
// router whose middleware acks failed messages (PoisonQueue, a hand-written
// one) or acks before handling (InstantAck), rows whose destination always
// fails stay in the table, are retried and end dead after MaxRetryCount
// attempts; nothing is recorded published that the destination did not
// accept, and the good rows are published exactly once. Each setup is
// warned about once.
func TestRouterMiddlewaresCannotLoseRows(t *testing.T) {
	t.Parallel()
	poisonPub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = poisonPub.Close() })
	poison, err := middleware.PoisonQueue(poisonPub, "poison")
	require.NoError(t, err)
	setups := []struct {
		name string
		mw   message.HandlerMiddleware
		warn string
	}{
		{"poison", poison, "acks failed messages"},
		{"instantack", middleware.InstantAck, "acks failed messages"},
		{"ackonerror", ackOnError, "acks failed messages"},
	}
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		cfg := fastConfig()
		cfg.MaxRetryCount = 3
		for _, setup := range setups {
			t.Run(setup.name, func(t *testing.T) {
				bad, good := setup.name+".bad", setup.name+".good"
				dest := newRecorder()
				dest.setFail(func(topic string, _ *message.Message) error {
					if topic == bad {
						return errors.New("destination refuses it")
					}
					return nil
				})
				logger := newLogs()
				router, err := message.NewRouter(message.RouterConfig{}, logger)
				require.NoError(t, err)
				router.AddMiddleware(setup.mw)
				f, err := forwarder.NewForwarder(e.with(t, cfg), dest, forwarder.Config{
					Router: router, HandlerName: setup.name, Topics: []string{setup.name + ".*"},
				}, logger)
				require.NoError(t, err)
				runRouter(t, router, f)

				bads := e.publish(t, bad, 3, nil)
				goods := e.publish(t, good, 5, nil)
				dest.waitDistinct(t, len(goods), 30*time.Second)
				where := `topic = '` + bad + `'`
				waitFor(t, 30*time.Second, "bad rows dead", func() bool {
					return e.count(t, where+` AND state = 'dead' AND attempts = 3`) == 3
				})
				require.Equal(t, 3, e.count(t, where), "no bad row deleted")
				for _, m := range bads {
					r, ok := e.row(t, m.UUID)
					require.True(t, ok)
					require.Equal(t, "dead", r.State)
					require.Contains(t, r.LastError.String, "retry budget of 3 attempts exhausted")
					require.Contains(t, r.LastError.String, "destination refuses it")
				}
				for _, r := range dest.snapshot() {
					require.Equal(t, good, r.topic, "only what the destination accepted")
					require.Equal(t, 1, dest.count(r.msg.UUID), "published once")
				}
				waitFor(t, 30*time.Second, "good rows acked", func() bool { return e.count(t, `topic = '`+good+`'`) == 0 })
				require.Equal(t, 1, countLogs(logger, setup.warn), "warned once")
			})
		}
	})
}

// TestDeduplicatorCannotLoseRows: a Deduplicator acks the second of two
// equal payloads without calling the handler. The row is not lost: each
// such delivery is a failed attempt, and it ends dead, readable and
// requeue-able.
func TestDeduplicatorCannotLoseRows(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		cfg := fastConfig()
		cfg.MaxRetryCount = 2
		dest := newRecorder()
		logger := newLogs()
		router, err := message.NewRouter(message.RouterConfig{}, logger)
		require.NoError(t, err)
		router.AddMiddleware((&middleware.Deduplicator{}).Middleware)
		f, err := forwarder.NewForwarder(e.with(t, cfg), dest, forwarder.Config{Router: router}, logger)
		require.NoError(t, err)
		runRouter(t, router, f)

		twins := make([]*message.Message, 2)
		for i := range twins {
			twins[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"same":"payload"}`))
		}
		require.NoError(t, e.pub.Publish("t", twins...))
		dest.waitDistinct(t, 1, 30*time.Second)
		waitFor(t, 30*time.Second, "the skipped twin dead", func() bool { return e.count(t, "state = 'dead'") == 1 })
		require.Equal(t, 1, e.count(t, "1=1"), "the published twin is acked, the other kept")
		require.Equal(t, 1, e.count(t, "state = 'dead' AND attempts = 2 AND last_error LIKE '%acked without being published%'"))
		require.Equal(t, 1, countLogs(logger, "without being handled"), "warned once")
	})
}

// TestInstantAckWaitsForTheHandler: InstantAck acks before the handler
// runs. The row is settled by the handler's record, not by that ack: while
// the destination is still publishing the row stays claimed, and it is
// acked once, after the publish returned.
func TestInstantAckWaitsForTheHandler(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, e *relayEnv) {
		msgs := e.publish(t, "t", 2, nil)
		slow, quick := msgs[0], msgs[1]
		entered, release := make(chan struct{}), make(chan struct{})
		dest := newRecorder()
		dest.setFail(func(_ string, m *message.Message) error {
			if m.UUID == slow.UUID {
				close(entered)
				<-release
			}
			return nil
		})
		router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
		require.NoError(t, err)
		router.AddMiddleware(middleware.InstantAck)
		f, err := forwarder.NewForwarder(e.store, dest, forwarder.Config{Router: router}, nil)
		require.NoError(t, err)
		runRouter(t, router, f)

		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("not published")
		}
		// Both were acked at once by InstantAck; the quick one's ack is
		// written, the slow one's publish has not returned: it stays.
		waitFor(t, 30*time.Second, "the quick row acked", func() bool { _, ok := e.row(t, quick.UUID); return !ok })
		r, ok := e.row(t, slow.UUID)
		require.True(t, ok, "acked early, but its publish has not returned: the row stays")
		require.True(t, r.Claimed)
		close(release)
		waitFor(t, 30*time.Second, "acked after the publish", func() bool { return e.count(t, "1=1") == 0 })
		require.Equal(t, 1, dest.count(slow.UUID))
		require.Equal(t, 1, dest.count(quick.UUID))
	})
}

// TestSecondForwarderNeedsItsOwnHandlerName: Watermill panics on a taken
// handler name; NewForwarder returns an error naming HandlerName instead.
func TestSecondForwarderNeedsItsOwnHandlerName(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[2])
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	_, err = forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{Router: router}, nil)
	require.NoError(t, err)
	_, err = forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{Router: router}, nil)
	require.ErrorContains(t, err, "HandlerName")
	require.ErrorContains(t, err, forwarder.DefaultHandlerName)
	_, err = forwarder.NewForwarder(e.store, newRecorder(), forwarder.Config{Router: router, HandlerName: "second"}, nil)
	require.NoError(t, err, "with a name of its own")
}

// logs is a logger recording every line, safe to read while the relay
// logs (Watermill's CaptureLoggerAdapter hands out its map unlocked).
type logs struct {
	mu    sync.Mutex
	lines []logLine
}

type logLine struct {
	level watermill.LogLevel
	msg   string
	err   error
}

func newLogs() *logs { return &logs{} }

func (l *logs) add(level watermill.LogLevel, msg string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, logLine{level, msg, err})
}

func (l *logs) Error(msg string, err error, _ watermill.LogFields) {
	l.add(watermill.ErrorLogLevel, msg, err)
}
func (l *logs) Info(msg string, _ watermill.LogFields)           { l.add(watermill.InfoLogLevel, msg, nil) }
func (l *logs) Debug(msg string, _ watermill.LogFields)          { l.add(watermill.DebugLogLevel, msg, nil) }
func (l *logs) Trace(msg string, _ watermill.LogFields)          { l.add(watermill.TraceLogLevel, msg, nil) }
func (l *logs) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// at returns the lines logged at level.
func (l *logs) at(level watermill.LogLevel) []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
	for _, line := range l.lines {
		if line.level == level {
			out = append(out, line)
		}
	}
	return out
}

func countLogs(l *logs, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line.msg, substr) {
			n++
		}
	}
	return n
}

var _ relaystore.Store = configured{}
