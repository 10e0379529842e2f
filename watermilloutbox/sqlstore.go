package watermilloutbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/e0a82c8c/watermill-outbox/config"
	"github.com/e0a82c8c/watermill-outbox/internal/sqlident"
	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// maxErrorLen bounds last_error: a broker error can embed a whole payload.
const maxErrorLen = 2000

// SQLStoreConfig configures an SQLStore.
type SQLStoreConfig struct {
	// Dialect of the database. Required: the driver behind a *sql.DB is
	// never guessed (Migrate and the first claim or publish check that it
	// matches, see ErrDialectMismatch).
	Dialect Dialect

	// Outbox holds every other setting: the table, and what the publisher
	// and the relay built on this store run by (see config.Config). Zero
	// fields take the defaults documented there.
	Outbox config.Config
}

// SQLStore is the outbox table on PostgreSQL, MySQL/MariaDB or SQLite: the
// relaystore.Store the relay claims rows through, Migrate for its DDL, and
// the operator's view of it (ListDead, Requeue, PurgeDead). A Publisher writes
// into the same table (NewPublisher takes the store), so the dialect, the
// table and each setting are given once, here.
//
// Claims are one short transaction: the candidates are read without locks,
// then taken by one UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)
// RETURNING (PostgreSQL), a SELECT … FOR UPDATE SKIP LOCKED and an UPDATE
// by id (MySQL), or a SELECT and an UPDATE by id under SQLite's write lock;
// every later write is fenced by the claim token. All times come from the
// database clock.
//
// watermill-sql's subscriber cannot serve here: it keeps a transaction open
// while handlers run, tracks one offset per consumer group (one active reader,
// and an id cursor that skips rows committed out of id order), and has no
// leases, attempts or dead state. Hence the queries below.
type SQLStore struct {
	db         database
	sqlDB      *sql.DB       // db's *sql.DB, nil over a pgx pool
	pool       *pgxpool.Pool // db's pgx pool, nil over a *sql.DB
	config     config.Config
	t          table
	logger     watermill.LoggerAdapter
	probe      dialectProbe
	q          claimSQL
	cursor     keyCursor // where the last walk over the keys stopped
	vacuum     vacuumClock
	relayPurge relayPurge

	listenState atomic.Int32 // a ListenState
	// mode is how the store's statements run on pgx; nil for a *sql.DB
	// of another driver.
	mode *stmtMode

	// claimHook, when set (tests only), runs inside the MySQL claim
	// transaction just before it commits.
	claimHook func()
	// takeHook, when set (tests only), runs on PostgreSQL's pipelined
	// claim just after the take committed; an error it returns stands for
	// a failure of the writes that follow.
	takeHook func() error
	// tripsHook, when set (tests only), is told how many round trips each
	// pipelined claim took.
	tripsHook func(trips int)
}

var _ relaystore.Store = (*SQLStore)(nil)

// NewSQLStore returns the store of the outbox table config.Outbox.Table on
// db. It does not touch the database: Migrate creates the table. A nil
// logger logs nothing.
func NewSQLStore(db *sql.DB, config SQLStoreConfig, logger watermill.LoggerAdapter) (*SQLStore, error) {
	if db == nil {
		return nil, errors.New("invalid config: db is nil")
	}
	var mode *stmtMode
	if isPgxDriver(db) {
		mode = &stmtMode{}
	}
	s, err := newStore(newSQLDB(db, mode), config.Dialect, config.Outbox, logger)
	if err != nil {
		return nil, err
	}
	s.sqlDB, s.mode = db, mode
	return s, nil
}

// PgxStoreConfig configures a store over a pgx pool (NewPgxStore).
type PgxStoreConfig struct {
	// Outbox holds every setting: the table, and what the publisher and
	// the relay built on this store run by (see config.Config). Zero
	// fields take the defaults documented there.
	Outbox config.Config
}

// NewPgxStore returns the store of the outbox table config.Outbox.Table on
// a PostgreSQL pgx pool, for services that use pgx (github.com/jackc/pgx/v5)
// and no database/sql: the relay claims, writes, LISTENs (on a connection of
// its own, taken from the pool, or dialled to ListenURL) and reads Stats
// through pool, and a
// Publisher built on the store writes under a pgx.Tx (WithPgxTx,
// ContextWithPgxTx) as under a *sql.Tx. It does not touch the database:
// Migrate creates the table. A nil logger logs nothing.
func NewPgxStore(pool *pgxpool.Pool, config PgxStoreConfig, logger watermill.LoggerAdapter) (*SQLStore, error) {
	if pool == nil {
		return nil, errors.New("invalid config: pool is nil")
	}
	mode := &stmtMode{}
	s, err := newStore(newPgxDB(pool, mode), PostgreSQL, config.Outbox, logger)
	if err != nil {
		return nil, err
	}
	s.pool, s.mode = pool, mode
	return s, nil
}

func newStore(db database, dialect Dialect, cfg config.Config, logger watermill.LoggerAdapter) (*SQLStore, error) {
	cfg.SetDefaults()
	// The table first: its error is ErrInvalidTableName.
	t, err := newTable(dialect, cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if cfg.ListenURL != "" && t.d.notify(sqlident.NotifyChannel(t.name)) == "" {
		return nil, fmt.Errorf("invalid config: ListenURL: LISTEN is PostgreSQL's, the dialect is %s", dialect)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &SQLStore{db: db, config: cfg, t: t, logger: logger, q: claimSQL{t: t}}, nil
}

// Config implements relaystore.Store: the settings the store was built with, defaults
// filled in.
func (s *SQLStore) Config() config.Config { return s.config }

// Dialect returns the store's dialect.
func (s *SQLStore) Dialect() Dialect { return s.t.d.name() }

// DB returns the store's *sql.DB; nil for a store over a pgx pool.
func (s *SQLStore) DB() *sql.DB { return s.sqlDB }

// Pool returns the store's pgx pool; nil for a store over a *sql.DB.
func (s *SQLStore) Pool() *pgxpool.Pool { return s.pool }

// Migrate creates the outbox table and its indexes if they do not exist,
// after checking that the database is the one the Dialect names
// (ErrDialectMismatch). It is idempotent and safe to call from several
// instances at once: the statements run under a database-wide lock (an
// advisory lock on PostgreSQL, GET_LOCK on MySQL, the write lock on SQLite).
func (s *SQLStore) Migrate(ctx context.Context) error {
	if err := s.checkDialect(ctx); err != nil {
		return err
	}
	if err := s.t.migrate(ctx, s.db); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", s.t.name, err)
	}
	return nil
}

// queryColumn runs q, which selects one column, and returns its values.
func queryColumn[T any](ctx context.Context, db queryer, q string, args ...any) ([]T, error) {
	rs, err := db.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return scanColumn[T](rs)
}

// scanColumn reads the values of rs, which selects one column, and closes
// it.
func scanColumn[T any](rs rows) ([]T, error) {
	defer rs.Close()
	var out []T
	for rs.Next() {
		var v T
		if err := rs.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}

// rowExtra names the column a query selects after rowColumns, if any.
type rowExtra int

const (
	noExtra       rowExtra = iota
	withLastError          // last_error (dead rows)
	withReclaimed          // whose claim the row held, NULL for none (claims; see claimSQL.takenFrom)
)

// queryRows runs q, which selects rowColumns and the extra column, and
// returns its rows and, by id, why those it could not decode are
// undecodable.
func (s *SQLStore) queryRows(ctx context.Context, db queryer, q string, args []any, extra rowExtra) ([]relaystore.Row, map[int64]string, error) {
	var out []relaystore.Row
	var bad map[int64]string
	err := s.scanRows(ctx, db, q, args, extra, collectRows(&out, &bad))
	return out, bad, err
}

// collectRows is a scanRows callback that appends to rows and notes the
// undecodable ones in bad.
func collectRows(rows *[]relaystore.Row, bad *map[int64]string) func(relaystore.Row, sql.NullString, error) {
	return func(r relaystore.Row, _ sql.NullString, why error) {
		*rows = append(*rows, r)
		if why != nil {
			if *bad == nil {
				*bad = make(map[int64]string)
			}
			(*bad)[r.ID] = why.Error()
		}
	}
}

// scanRows runs q, which selects rowColumns and the extra column, and hands
// each row to fn. It is the one place rows are read: metadata decoded, a
// NULL key made "", a nil payload made empty. A row it cannot decode
// (metadata that is not a JSON object of strings, written by another
// program; a topic that is not UTF-8) is handed over all the same, with
// what it could read and why it is undecodable: one such row must not fail
// the read of the others.
func (s *SQLStore) scanRows(ctx context.Context, db queryer, q string, args []any, extra rowExtra, fn func(relaystore.Row, sql.NullString, error)) error {
	rs, err := db.query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	return s.readRows(rs, extra, fn)
}

// readRows reads the rows of a query that selects rowColumns and the extra
// column.
func (s *SQLStore) readRows(rs rows, extra rowExtra, fn func(relaystore.Row, sql.NullString, error)) error {
	// The scan's targets are made once per read, not per row: each one
	// whose address a Scan takes is an allocation of its own. Every field
	// is set anew for each row (the payload and the metadata into fresh
	// slices), and fn gets copies.
	var (
		r            relaystore.Row
		key, lastErr sql.NullString
		md           []byte
		created      int64
	)
	dest := []any{&r.ID, &r.UUID, &r.Topic, &key, &r.Payload, &md, &created, &r.Attempts}
	if extra == withLastError || extra == withReclaimed {
		dest = append(dest, &lastErr)
	}
	for rs.Next() {
		r, key, lastErr, md = relaystore.Row{}, sql.NullString{}, sql.NullString{}, nil
		if err := rs.Scan(dest...); err != nil {
			return err
		}
		r.PartitionKey = key.String
		r.CreatedAt = time.UnixMicro(created)
		var why error
		if len(md) > 0 {
			if err := json.Unmarshal(md, &r.Metadata); err != nil {
				r.Metadata = nil
				why = fmt.Errorf("undecodable row: metadata is not a JSON object of strings: %w", err)
			}
		}
		if why == nil && !utf8.ValidString(r.Topic) {
			why = fmt.Errorf("undecodable row: topic %q is not valid UTF-8", r.Topic)
		}
		if r.Payload == nil {
			r.Payload = []byte{}
		}
		if extra == withReclaimed {
			r.Reclaimed = lastErr.Valid
		}
		fn(r, lastErr, why)
	}
	return rs.Err()
}

// exec runs a fenced write and returns the rows it changed.
func (s *SQLStore) exec(ctx context.Context, op, q string, args ...any) (int, error) {
	n, err := s.db.exec(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: %s: %w", op, markContention(err))
	}
	return int(n), nil
}

// MarkPublished implements relaystore.Store.
func (s *SQLStore) MarkPublished(ctx context.Context, token string, ids []int64, keep bool) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.p
	in, idArgs := s.t.idList(2, ids)
	if !keep {
		return s.exec(ctx, "mark published", `DELETE FROM `+s.t.quoted+` WHERE claim_token = `+p(1)+` AND `+in,
			append([]any{token}, idArgs...)...)
	}
	return s.exec(ctx, "mark published", `UPDATE `+s.t.quoted+` SET state = 'published', published_at = `+s.t.now()+
		`, claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(1)+` AND `+in,
		append([]any{token}, idArgs...)...)
}

// RecordFailure implements relaystore.Store.
func (s *SQLStore) RecordFailure(ctx context.Context, token string, id int64, lastError string, delay time.Duration) (int, error) {
	p := s.t.p
	return s.exec(ctx, "record failure", `UPDATE `+s.t.quoted+` SET attempts = attempts + 1, last_error = `+p(1)+
		`, available_at = `+s.t.plus(2)+`, waiting = 1, claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(3)+` AND id = `+p(4),
		truncateError(lastError), max(delay, 0).Microseconds(), token, id)
}

// MarkDead implements relaystore.Store.
func (s *SQLStore) MarkDead(ctx context.Context, token string, id int64, lastError string) (int, error) {
	q, args := s.markDead(token, id, lastError)
	return s.exec(ctx, "mark dead", q, args...)
}

// markDead is MarkDead's statement.
func (s *SQLStore) markDead(token string, id int64, lastError string) (string, []any) {
	p := s.t.p
	return `UPDATE ` + s.t.quoted + ` SET state = 'dead', attempts = attempts + 1, last_error = ` + p(1) +
			`, claim_token = NULL, claimed_until = NULL WHERE claim_token = ` + p(2) + ` AND id = ` + p(3),
		[]any{truncateError(lastError), token, id}
}

// Renew implements relaystore.Store.
func (s *SQLStore) Renew(ctx context.Context, token string, ids []int64, lease time.Duration) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.p
	in, idArgs := s.t.idList(3, ids)
	return s.exec(ctx, "renew", `UPDATE `+s.t.quoted+` SET claimed_until = `+s.t.plus(1)+
		` WHERE claim_token = `+p(2)+` AND `+in, append([]any{lease.Microseconds(), token}, idArgs...)...)
}

// Release implements relaystore.Store.
func (s *SQLStore) Release(ctx context.Context, token string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.p
	in, idArgs := s.t.idList(2, ids)
	return s.exec(ctx, "release", `UPDATE `+s.t.quoted+` SET claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(1)+` AND `+in,
		append([]any{token}, idArgs...)...)
}

// PurgePublished implements relaystore.Store.
func (s *SQLStore) PurgePublished(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	if limit < 1 {
		return 0, nil
	}
	return s.exec(ctx, "purge published", s.t.d.purgePublished(s.t), olderThan.Microseconds(), limit)
}

func truncateError(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	cut := maxErrorLen
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
