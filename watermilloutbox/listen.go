package watermilloutbox

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	"github.com/e0a82c8c/watermill-outbox/internal/warn"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// errNotPgx: LISTEN needs the pgx driver's connection.
var errNotPgx = errors.New("the *sql.DB does not use the pgx driver (github.com/jackc/pgx/v5/stdlib)")

// ListenState says whether the store's Listen receives the commit
// notifications (SQLStore.ListenState).
type ListenState int32

const (
	// ListenOff: no LISTEN runs (MySQL, SQLite, DisableNotify, or Listen
	// not called or ended), or its first check has not finished.
	ListenOff ListenState = iota
	// ListenReceiving: after its last (re)connect the LISTEN received a
	// notification the store sent itself; commits wake the relay.
	ListenReceiving
	// ListenDeaf: it did not, within listenCheckTimeout. The likely cause
	// is a transaction pooler between the relay and PostgreSQL; the relay
	// finds new rows by polling (PollingInterval) until a reconnect's
	// check succeeds. Set config.Config.ListenURL to a direct address.
	ListenDeaf
)

func (l ListenState) String() string {
	switch l {
	case ListenReceiving:
		return "receiving"
	case ListenDeaf:
		return "deaf"
	}
	return "off"
}

// listenCheckTimeout is how long the LISTEN's check waits for the
// notification it sent itself: PostgreSQL delivers one in about a
// millisecond, so only a LISTEN that cannot receive waits it out.
var listenCheckTimeout = 5 * time.Second

// ListenState reports whether Listen receives the commit notifications,
// as its check after the last (re)connect found.
func (s *SQLStore) ListenState() ListenState { return ListenState(s.listenState.Load()) }

// setListenState records the check's verdict; a LISTEN that turns deaf is
// logged once, with its likely cause and the setting that fixes it.
func (s *SQLStore) setListenState(l ListenState) {
	was := ListenState(s.listenState.Swap(int32(l)))
	switch {
	case l == ListenDeaf && was != ListenDeaf:
		fix := "set ListenURL (OUTBOX_LISTEN_DATABASE_URL, the relay's --listen-database-url) to PostgreSQL's direct address"
		if s.config.ListenURL != "" {
			fix = "ListenURL (OUTBOX_LISTEN_DATABASE_URL, --listen-database-url) is set: point it at PostgreSQL itself, not at the pooler"
		}
		warn.Log(s.logger, "Outbox LISTEN receives no notifications, not even one it sent itself: the relay finds new rows "+
			"only by polling. Likely cause: a transaction pooler (PgBouncer with pool_mode = transaction, or a managed "+
			"pooler) between the relay and PostgreSQL; "+fix, nil,
			watermill.LogFields{"channel": sqlident.NotifyChannel(s.t.name), "waited": listenCheckTimeout.String(),
				"polling_interval": s.config.PollingInterval.String()})
	case l == ListenReceiving && was == ListenDeaf:
		s.logger.Info("Outbox LISTEN receives notifications again", nil)
	}
}

// Listen implements relaystore.Store. On PostgreSQL, unless DisableNotify is set, it
// LISTENs on the table's channel (sqlident.NotifyChannel), on a connection of its own
// to ListenURL when that is set, else on one connection of the store's pool
// (a *sql.DB must use the pgx driver), and calls wake on every notification
// and after every (re)connect (covering the commits whose notifications were
// missed). After each (re)connect it checks that the LISTEN receives: it
// sends a notification through the store's pool and waits for it
// (ListenState; a LISTEN through a transaction pooler never gets it). A
// lost connection is dialled again with backoff. It returns relaystore.ErrNoWakeUps at
// once on MySQL and SQLite, with DisableNotify, without the pgx driver, and
// for a pool limited to one connection without ListenURL (the listener
// would starve everything else).
func (s *SQLStore) Listen(ctx context.Context, wake func()) error {
	channel := sqlident.NotifyChannel(s.t.name)
	if s.t.d.notify(channel) == "" || s.config.DisableNotify {
		return relaystore.ErrNoWakeUps
	}
	if s.config.ListenURL == "" && s.db.maxConns() == 1 {
		return fmt.Errorf("%w: the pool allows one connection, which LISTEN would take (set ListenURL)", relaystore.ErrNoWakeUps)
	}
	defer s.listenState.Store(int32(ListenOff))
	failures := 0
	for {
		var listening atomic.Bool
		err := s.listenOnce(ctx, channel, func() {
			listening.Store(true)
			wake()
		}, wake)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errNotPgx) {
			return fmt.Errorf("%w: %v", relaystore.ErrNoWakeUps, err)
		}
		if listening.Load() {
			failures = 0 // it worked for a while: start the backoff afresh
		}
		failures++
		delay := backoff.Jittered(failures, backoff.DBMin, backoff.DBMax)
		fields := watermill.LogFields{"retry_in": delay.String(), "consecutive_failures": failures}
		if failures == 1 {
			s.logger.Error("Outbox LISTEN connection lost, reconnecting", err, fields)
		} else {
			s.logger.Debug("Outbox LISTEN reconnect failed: "+err.Error(), fields)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// listenOnce holds one connection LISTENing until it fails or ctx ends. The
// connection never returns to the pool, so no pooled connection stays
// subscribed.
func (s *SQLStore) listenOnce(ctx context.Context, channel string, listening, wake func()) error {
	withConn := s.db.withPgxConn
	if s.config.ListenURL != "" {
		withConn = s.dialListen
	}
	return withConn(ctx, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return err
		}
		listening()
		return s.receive(ctx, c, channel, wake)
	})
}

// dialListen runs fn on a connection of its own to ListenURL, closed after.
func (s *SQLStore) dialListen(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := pgx.Connect(ctx, s.config.ListenURL)
	if err != nil {
		return fmt.Errorf("connect to ListenURL: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	return fn(c)
}

// receive calls wake for every notification on c until it fails or ctx
// ends. It first checks that notifications arrive at all: it sends one with
// a payload of its own through the store's pool, as a publisher would, and
// waits listenCheckTimeout for it.
func (s *SQLStore) receive(ctx context.Context, c *pgx.Conn, channel string, wake func()) error {
	token := "check " + uuid.NewString()
	if _, err := s.db.exec(ctx, `SELECT pg_notify($1, $2)`, channel, token); err != nil {
		return fmt.Errorf("send the LISTEN check: %w", err)
	}
	check, cancel := context.WithTimeout(ctx, listenCheckTimeout)
	defer cancel()
	checking := true
	for {
		wait := ctx
		if checking {
			wait = check
		}
		n, err := c.WaitForNotification(wait)
		if err != nil {
			if checking && ctx.Err() == nil && check.Err() != nil {
				// A timeout leaves the connection usable: keep listening,
				// in case the notifications come after all.
				checking = false
				s.setListenState(ListenDeaf)
				continue
			}
			return err
		}
		if checking && n.Payload == token {
			checking = false
			s.setListenState(ListenReceiving)
		}
		wake()
	}
}
