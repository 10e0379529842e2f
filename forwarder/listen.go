package forwarder

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// notifySource is what the listener needs of a store; SQLStore has it.
type notifySource interface {
	DB() *sql.DB
	Dialect() outbox.Dialect
	Table() string
}

// errNotPgx: LISTEN needs the pgx driver's connection.
var errNotPgx = errors.New("the *sql.DB does not use the pgx driver (github.com/jackc/pgx/v5/stdlib)")

// startListener starts the LISTEN loop when the store is PostgreSQL and the
// wake-up is on. s.mu must be held.
func (s *Subscriber) startListener() {
	if s.listening || s.config.DisableNotify {
		return
	}
	src, ok := s.store.(notifySource)
	if !ok || src.Dialect() != outbox.PostgreSQL {
		return
	}
	// The listener keeps one connection of the pool for itself; with a
	// pool of one it would starve the claims.
	if n := src.DB().Stats().MaxOpenConnections; n == 1 {
		s.logger.Info("Outbox relay not listening for commits: the *sql.DB allows one connection; polling only", nil)
		return
	}
	s.listening = true
	ctx, cancel := context.WithCancel(context.Background())
	s.subsWg.Add(2)
	go func() {
		defer s.subsWg.Done()
		<-s.closing
		cancel()
	}()
	go func() {
		defer s.subsWg.Done()
		s.listenLoop(ctx, src.DB(), outbox.NotifyChannel(src.Table()))
	}()
}

// listenLoop LISTENs on channel and wakes the subscriptions on every
// notification until ctx ends. A lost connection is dialled again with
// backoff; polling covers the gap, and a wake-up after each (re)connect
// covers the commits whose notifications were missed.
func (s *Subscriber) listenLoop(ctx context.Context, db *sql.DB, channel string) {
	delay := time.Duration(0)
	for {
		var listening atomic.Bool
		err := s.listenOnce(ctx, db, channel, func() {
			listening.Store(true)
			s.Wake()
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNotPgx) {
			s.logger.Info("Outbox relay not listening for commits, polling only: "+err.Error(), nil)
			return
		}
		if listening.Load() {
			delay = 0 // it worked for a while: start the backoff afresh
		}
		delay = nextDelay(delay)
		s.logger.Error("Outbox LISTEN connection lost, reconnecting", err, watermill.LogFields{"retry_in": delay.String()})
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
	}
}

// listenOnce holds one connection LISTENing until it fails or ctx ends. The
// connection never returns to the pool: it is discarded (driver.ErrBadConn),
// so no pooled connection stays subscribed.
func (s *Subscriber) listenOnce(ctx context.Context, db *sql.DB, channel string, listening func()) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		pc, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok {
			return errNotPgx
		}
		c := pc.Conn()
		if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return errors.Join(err, driver.ErrBadConn)
		}
		listening()
		for {
			if _, err := c.WaitForNotification(ctx); err != nil {
				return errors.Join(err, driver.ErrBadConn)
			}
			s.Wake()
		}
	})
}

// Notify implements watermilloutbox.Notifier, for a publisher in the same
// process (PublisherConfig.Notifier): committed rows wake the relay at once.
// Rows still in the caller's transaction are not visible yet, so the relay
// only looks NotifyInterval later (and once more after that, as after any
// wake-up); a transaction that commits later still is found by a
// notification or a poll. Several calls within one interval schedule one
// look. With DisableNotify it does nothing.
func (s *Subscriber) Notify(committed bool) {
	if s.config.DisableNotify {
		return
	}
	if committed {
		s.Wake()
		return
	}
	if s.soon.CompareAndSwap(false, true) {
		time.AfterFunc(s.config.NotifyInterval, func() {
			s.soon.Store(false)
			s.Wake()
		})
	}
}

var _ outbox.Notifier = (*Subscriber)(nil)
