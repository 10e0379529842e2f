package watermilloutbox

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/e0a82c8c/watermill-outbox/internal/backoff"
)

// errNotPgx: LISTEN needs the pgx driver's connection.
var errNotPgx = errors.New("the *sql.DB does not use the pgx driver (github.com/jackc/pgx/v5/stdlib)")

// Listen implements Store. On PostgreSQL, unless DisableNotify is set, it
// LISTENs on the table's channel (NotifyChannel) on one connection of the
// store's pool (a *sql.DB must use the pgx driver), and calls wake on every
// notification and after every (re)connect (covering the commits whose
// notifications were missed). A lost connection is dialled again with
// backoff. It returns ErrNoWakeUps at once on MySQL and SQLite, with
// DisableNotify, without the pgx driver, and for a pool limited to one
// connection (the listener would starve everything else).
func (s *SQLStore) Listen(ctx context.Context, wake func()) error {
	if s.t.dialect != PostgreSQL || s.config.DisableNotify {
		return ErrNoWakeUps
	}
	if s.db.maxConns() == 1 {
		return fmt.Errorf("%w: the pool allows one connection, which LISTEN would take", ErrNoWakeUps)
	}
	channel := NotifyChannel(s.t.name)
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
			return fmt.Errorf("%w: %v", ErrNoWakeUps, err)
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
	return s.db.withPgxConn(ctx, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return err
		}
		listening()
		for {
			if _, err := c.WaitForNotification(ctx); err != nil {
				return err
			}
			wake()
		}
	})
}
