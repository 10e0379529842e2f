package watermilloutbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// dialectProbe remembers that the database answered as its dialect should,
// so the check runs once per store, and that the store's pool was looked
// at for a pooler (detectPooler).
type dialectProbe struct {
	ok     atomic.Bool
	pooler atomic.Bool // detectPooler ran
	mu     sync.Mutex  // one probe at a time
}

// checkDialect returns ErrDialectMismatch, naming the dialect and the driver,
// when the database is not what the store's Dialect says. A database that
// cannot be reached, or that fails the probe for any other reason, returns
// its error, and is asked again next time.
func (s *SQLStore) checkDialect(ctx context.Context) error {
	return s.checkDialectOn(ctx, nil)
}

// checkDialectOn is checkDialect through q, a transaction already open, or
// through the store's pool when q is nil. A Publish probes through the
// transaction it writes under: with a pool of one connection (SQLite's
// advice), the caller's transaction holds it, and a probe through the pool
// would wait for it forever. The pool's first use also looks for a pooler
// (detectPooler), even when a Publish made the dialect check already.
func (s *SQLStore) checkDialectOn(ctx context.Context, q queryer) error {
	if s.probe.ok.Load() && (q != nil || s.probe.pooler.Load()) {
		return nil
	}
	s.probe.mu.Lock()
	defer s.probe.mu.Unlock()
	if q == nil && !s.probe.pooler.Load() {
		if err := s.db.ping(ctx); err != nil {
			return fmt.Errorf("outbox: connect: %w", err)
		}
		if err := s.detectPooler(ctx); err != nil {
			return fmt.Errorf("outbox: connect: %w", err)
		}
		s.probe.pooler.Store(true)
	}
	if s.probe.ok.Load() {
		return nil
	}
	if q == nil {
		q = s.db
	}
	if err := probeDialect(ctx, q, s.t.d, s.db.driver()); err != nil {
		return err
	}
	s.probe.ok.Store(true)
	return nil
}

// probeDialect asks the database for its version in the dialect's own words.
// Only an answer of another database, or the version function missing, is
// a mismatch; any other failure (a lost connection, a pooler's error) is
// returned as it is.
func probeDialect(ctx context.Context, db queryer, d sqlDialect, driver string) error {
	q := d.versionQuery()
	var version string
	err := db.queryRow(ctx, q).Scan(&version)
	if err == nil && d.versionAnswer(version) {
		return nil
	}
	if err != nil && !missingFunction(err) {
		return fmt.Errorf("outbox: check that the database is %s (driver %s): %w", d.name(), driver, err)
	}
	if err != nil {
		return fmt.Errorf("%w: dialect %s, but the database (driver %s) failed: %w to %q",
			ErrDialectMismatch, d.name(), driver, err, q)
	}
	return fmt.Errorf("%w: dialect %s, but the database (driver %s) answered %q to %q",
		ErrDialectMismatch, d.name(), driver, version, q)
}

// missingFunction reports whether err says the function called does not
// exist: what the probe of one dialect gets from another's database, so
// each dialect is asked.
func missingFunction(err error) bool {
	for _, d := range dialects {
		if d.missingFunction(err) {
			return true
		}
	}
	return false
}

// detectPooler sets the store's stmtMode to direct when a connection of
// its pool talks to PostgreSQL itself: the backend pid its startup
// announced (BackendKeyData) is the one pg_backend_pid() returns. A pooler
// answers the startup with a cancel key of its own, so behind one the
// statements stay unnamed. A pool whose connections are not pgx's
// (a wrapped driver) stays unnamed too.
func (s *SQLStore) detectPooler(ctx context.Context) error {
	pc, ok := s.db.(pgxConner)
	if s.mode == nil || s.mode.direct.Load() || !ok {
		return nil
	}
	err := pc.withConn(ctx, func(c *pgx.Conn) error {
		var pid uint32
		// The simple protocol: no statement is prepared to ask.
		if err := c.QueryRow(ctx, `SELECT pg_backend_pid()`, pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
			return err
		}
		s.mode.direct.Store(pid == c.PgConn().PID())
		return nil
	})
	if errors.Is(err, errNotPgx) {
		return nil
	}
	return err
}
