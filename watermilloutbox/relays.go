package watermilloutbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// Relay liveness.
//
// A lease (ClaimTimeout) must outlast the longest publish, so it is long
// (300 s by default), and a relay that dies holding rows would freeze their
// keys until it ends. So each relay also makes itself known in a registry
// table beside the outbox (<table>_relays): one row per relay, alive_until
// pushed a few seconds ahead by a heartbeat every second or so
// (config.Config.RelayTimeout). Every claim records the relay that holds it
// (claimed_by), and a claim treats the rows of a relay whose heartbeat has
// expired as free whatever their claimed_until says; the rows of a live
// relay keep their lease. So a crash costs seconds, and a slow publish on a
// live relay still keeps its rows.
//
// Heartbeat rows rather than session locks (PostgreSQL's advisory locks,
// MySQL's GET_LOCK, which end with the session even on SIGKILL): a session
// lock needs a connection of its own held for the relay's life, which a
// transaction pooler (PgBouncer) does not give, and SQLite has none. A row
// works through every pooler and dialect, on the database's clock.
//
// Nothing here weakens fencing: the claim token still changes on every
// claim, and every later write names it. A relay declared dead that comes
// back (SIGSTOP, a long pause, a partition) writes nothing over its
// successor's outcome; what it costs is that the rows it was publishing may
// go out twice (duplicates within its in-flight window). Its next beat
// tells it (Beat.Lapsed) and it registers again.
//
// The registry's rows are tiny and few (one per relay); the claim reads
// them through one uncorrelated subquery per statement, which PostgreSQL
// hashes once, MySQL materialises or probes by primary key, SQLite builds
// once: the claim's cost and round trips stay as they were.

// maxRelayID bounds a relay id (the claimed_by column is VARCHAR(64) on
// MySQL).
const maxRelayID = 64

// validRelayID: 1 to 64 letters, digits and . _ : -. The claim's SQL
// names the claiming relay as a literal (it repeats in several statements
// whose placeholders are numbered differently), which these characters
// make safe.
func validRelayID(id string) bool {
	if id == "" || len(id) > maxRelayID {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// relaysTable is the registry table's quoted name.
func (t table) relaysTable() string { return t.d.quoteIdent(t.name + "_relays") }

// relaysDDL creates the registry: one row per relay, alive until
// alive_until (database clock, in the outbox table's time form). The index
// on alive_until is what the claim's subquery reads: under the claim's
// plan settings (no sequential scans) a scan of the table without it is
// costed so high that PostgreSQL compiled each claim with JIT (1.6 s).
func (t table) relaysDDL() []string { return t.d.relaysDDL(t) }

// deadRelays selects the ids of the relays whose heartbeat has expired,
// but self: a relay never takes its own rows over (it holds them in its
// window, and a lapse of its own, such as a database outage longer than
// its timeout, must not make it claim them twice).
func (t table) deadRelays(self string) string {
	q := `SELECT id FROM ` + t.relaysTable() + ` WHERE alive_until < ` + t.now()
	if self != "" {
		q += ` AND id <> '` + self + `'`
	}
	return q
}

// heldByDead is the condition of a row leased to a relay whose heartbeat
// expired (alias "" or "t."). It is never NULL.
func (t table) heldByDead(alias, self string) string {
	return "(" + alias + "claimed_by IS NOT NULL AND " + alias + "claimed_by IN (" + t.deadRelays(self) + "))"
}

// forgetRelays is how long after its heartbeat expired a relay's registry
// row is deleted. By then every lease it took has ended on its own (a
// lease is at most ClaimTimeout from its last renewal); deleting it
// earlier would only bring back lease-only recovery for its rows.
func forgetRelays(lease time.Duration) time.Duration { return 2*lease + time.Minute }

// relayPurge remembers when Beat last deleted forgotten relays.
type relayPurge struct{ last atomic.Int64 }

// Beat implements relaystore.RelayRegistry.
func (s *SQLStore) Beat(ctx context.Context, id string, ttl time.Duration) (relaystore.Beat, error) {
	if !validRelayID(id) {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: invalid relay id %q: want 1 to %d letters, digits and . _ : -", id, maxRelayID)
	}
	if ttl <= 0 {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: ttl must be positive, got %s", ttl)
	}
	if err := s.checkDialect(ctx); err != nil {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: %w", err)
	}
	ttl = max(ttl, s.t.d.minRelayTTL())
	p := s.t.p
	r := s.t.relaysTable()
	n, err := s.db.exec(ctx, `UPDATE `+r+` SET alive_until = `+s.t.plus(1)+` WHERE id = `+p(2)+` AND alive_until >= `+s.t.now(),
		ttl.Microseconds(), id)
	if err != nil {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: %w", err)
	}
	if n > 0 {
		return relaystore.Beat{TTL: ttl}, s.purgeRelays(ctx)
	}
	// Not alive: first beat, or expired (declared dead). Register afresh;
	// rows others took over meanwhile carry their tokens now.
	gone, err := s.db.exec(ctx, `DELETE FROM `+r+` WHERE id = `+p(1), id)
	if err != nil {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: %w", err)
	}
	if _, err := s.db.exec(ctx, `INSERT INTO `+r+` (id, alive_until) VALUES (`+p(1)+`, `+s.t.plus(2)+`)`, id, ttl.Microseconds()); err != nil {
		return relaystore.Beat{}, fmt.Errorf("outbox: beat: register: %w", err)
	}
	return relaystore.Beat{Lapsed: gone > 0, TTL: ttl}, s.purgeRelays(ctx)
}

// purgeRelays deletes, about once a minute, the registry rows of relays
// gone for longer than forgetRelays.
func (s *SQLStore) purgeRelays(ctx context.Context) error {
	now := time.Now().UnixNano()
	last := s.relayPurge.last.Load()
	if now-last < int64(time.Minute) || !s.relayPurge.last.CompareAndSwap(last, now) {
		return nil
	}
	_, err := s.db.exec(ctx, `DELETE FROM `+s.t.relaysTable()+` WHERE alive_until < `+s.t.minus(1),
		forgetRelays(s.config.ClaimTimeout).Microseconds())
	if err != nil {
		return fmt.Errorf("outbox: beat: forget gone relays: %w", err)
	}
	return nil
}

// Leave implements relaystore.RelayRegistry.
func (s *SQLStore) Leave(ctx context.Context, id string) error {
	if !validRelayID(id) {
		return fmt.Errorf("outbox: leave: invalid relay id %q", id)
	}
	p := s.t.p
	// A microsecond ago: claims from now on see it expired.
	if _, err := s.db.exec(ctx, `UPDATE `+s.t.relaysTable()+` SET alive_until = `+s.t.minus(1)+` WHERE id = `+p(2),
		int64(1), id); err != nil {
		return fmt.Errorf("outbox: leave: %w", err)
	}
	return nil
}

var _ relaystore.RelayRegistry = (*SQLStore)(nil)
