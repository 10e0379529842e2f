package watermilloutbox

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// dialectProbe remembers that the database answered as its dialect should,
// so the check runs once per store.
type dialectProbe struct {
	ok atomic.Bool
	mu sync.Mutex // one probe at a time
}

// checkDialect returns ErrDialectMismatch, naming the dialect and the driver,
// when the database is not what the store's Dialect says. A database that
// cannot be reached returns its error, and is asked again next time.
func (s *SQLStore) checkDialect(ctx context.Context) error {
	if s.probe.ok.Load() {
		return nil
	}
	s.probe.mu.Lock()
	defer s.probe.mu.Unlock()
	if s.probe.ok.Load() {
		return nil
	}
	if err := s.db.ping(ctx); err != nil {
		return fmt.Errorf("outbox: connect: %w", err)
	}
	if err := probeDialect(ctx, s.db, s.t.dialect); err != nil {
		return err
	}
	s.probe.ok.Store(true)
	return nil
}

// probeDialect asks the database for its version in the dialect's own words.
func probeDialect(ctx context.Context, db database, d Dialect) error {
	var q string
	switch d {
	case PostgreSQL:
		q = `SELECT version()`
	case MySQL:
		q = `SELECT VERSION()`
	default:
		q = `SELECT 'SQLite ' || sqlite_version()`
	}
	var version string
	err := db.queryRow(ctx, q).Scan(&version)
	if err == nil && dialectAnswer(d, version) {
		return nil
	}
	answer := fmt.Sprintf("answered %q", version)
	if err != nil {
		answer = "failed: " + err.Error()
	}
	return fmt.Errorf("%w: dialect %s, but the database (driver %s) %s to %q",
		ErrDialectMismatch, d, db.driver(), answer, q)
}

// dialectAnswer reports whether a version string fits the dialect: MySQL
// and MariaDB answer "8.4.2" or "10.11.6-MariaDB", never "PostgreSQL …".
func dialectAnswer(d Dialect, version string) bool {
	switch d {
	case PostgreSQL:
		return strings.HasPrefix(version, "PostgreSQL")
	case MySQL:
		return version != "" && version[0] >= '0' && version[0] <= '9'
	default:
		return strings.HasPrefix(version, "SQLite 3")
	}
}
