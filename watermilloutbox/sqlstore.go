package watermilloutbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/e0a82c8c/watermill-outbox/config"
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
// Store the relay claims rows through, Migrate for its DDL, and the
// operator's view of it (ListDead, Requeue, PurgeDead). A Publisher writes
// into the same table (NewPublisher takes the store), so the dialect, the
// table and each setting are given once, here.
//
// Claims are one short transaction with FOR UPDATE SKIP LOCKED
// (PostgreSQL, MySQL) or a single UPDATE … RETURNING under SQLite's write
// lock; every later write is fenced by the claim token. All times come from
// the database clock.
//
// watermill-sql's subscriber cannot serve here: it keeps a transaction open
// while handlers run, tracks one offset per consumer group (one active reader,
// and an id cursor that skips rows committed out of id order), and has no
// leases, attempts or dead state. Hence the queries below.
type SQLStore struct {
	db     *sql.DB
	config config.Config
	t      table
	logger watermill.LoggerAdapter
	probe  dialectProbe

	// claimHook, when set (tests only), runs inside the MySQL claim
	// transaction just before it commits.
	claimHook func()
}

var _ Store = (*SQLStore)(nil)

// NewSQLStore returns the store of the outbox table config.Outbox.Table on
// db. It does not touch the database: Migrate creates the table. A nil
// logger logs nothing.
func NewSQLStore(db *sql.DB, config SQLStoreConfig, logger watermill.LoggerAdapter) (*SQLStore, error) {
	if db == nil {
		return nil, errors.New("invalid config: db is nil")
	}
	config.Outbox.SetDefaults()
	// The table first: its error is ErrInvalidTableName.
	t, err := newTable(config.Dialect, config.Outbox.Table)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if err := config.Outbox.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &SQLStore{db: db, config: config.Outbox, t: t, logger: logger}, nil
}

// Config implements Store: the settings the store was built with, defaults
// filled in.
func (s *SQLStore) Config() config.Config { return s.config }

// Dialect returns the store's dialect.
func (s *SQLStore) Dialect() Dialect { return s.t.dialect }

// DB returns the store's database handle.
func (s *SQLStore) DB() *sql.DB { return s.db }

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

// now is the database clock, in the form the dialect compares times with.
func (s *SQLStore) now() string {
	switch s.t.dialect {
	case PostgreSQL:
		return "now()"
	case MySQL:
		return "UTC_TIMESTAMP(6)"
	default:
		return "CAST(unixepoch('subsec') * 1000000 AS INTEGER)"
	}
}

// plus returns the SQL for "now + the duration bound at placeholder n",
// in microseconds; minus for "now - …".
func (s *SQLStore) plus(n int) string  { return s.shifted("+", n) }
func (s *SQLStore) minus(n int) string { return s.shifted("-", n) }

func (s *SQLStore) shifted(sign string, n int) string {
	p := s.t.dialect.placeholder(n)
	switch s.t.dialect {
	case PostgreSQL:
		return "now() " + sign + " (" + p + "::bigint * interval '1 microsecond')"
	case MySQL:
		return "UTC_TIMESTAMP(6) " + sign + " INTERVAL " + p + " MICROSECOND"
	default:
		return "(" + s.now() + " " + sign + " " + p + ")"
	}
}

// createdMicros selects created_at as microseconds since the Unix epoch, so
// one Scan works on every dialect whatever the driver's time settings.
func (s *SQLStore) createdMicros(alias string) string {
	switch s.t.dialect {
	case PostgreSQL:
		return "(extract(epoch FROM " + alias + "created_at) * 1000000)::bigint"
	case MySQL:
		return "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', " + alias + "created_at)"
	default:
		return alias + "created_at"
	}
}

// idList binds ids starting at placeholder n and returns the SQL condition.
func (s *SQLStore) idList(n int, ids []int64) (string, []any) {
	if s.t.dialect == PostgreSQL {
		return "id = ANY(" + s.t.dialect.placeholder(n) + ")", []any{ids}
	}
	var b strings.Builder
	args := make([]any, len(ids))
	b.WriteString("id IN (")
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s.t.dialect.placeholder(n + i))
		args[i] = id
	}
	b.WriteByte(')')
	return b.String(), args
}

// claimFilter is the WHERE clause of due, unleased pending rows; topics is
// the condition of the topic filter ("" for all topics).
func (s *SQLStore) claimFilter(topics string, ordered bool) string {
	now := s.now()
	w := "o.state = 'pending' AND o.available_at <= " + now +
		" AND (o.claimed_until IS NULL OR o.claimed_until < " + now + ")"
	if topics != "" {
		w += " AND " + topics
	}
	if ordered {
		// A keyed row waits while an earlier row of its key is leased or
		// backing off. Earlier rows that are due come first in id order, so
		// they are claimed in the same call (or this row is not).
		w += " AND (o.partition_key IS NULL OR NOT EXISTS (SELECT 1 FROM " + s.t.quoted + " e" +
			" WHERE e.topic = o.topic AND e.partition_key = o.partition_key AND e.state = 'pending' AND e.id < o.id" +
			" AND (e.available_at > " + now + " OR e.claimed_until >= " + now + ")))"
	}
	return w
}

// rowColumns lists what queryRows scans, each column prefixed with alias
// ("t." or "").
func (s *SQLStore) rowColumns(alias string) string {
	a := alias
	return a + "id, " + a + "uuid, " + a + "topic, " + a + "partition_key, " + a + "payload, " + a + "metadata, " +
		s.createdMicros(alias) + ", " + a + "attempts"
}

// Claim implements Store.
func (s *SQLStore) Claim(ctx context.Context, req ClaimRequest) (string, []Row, error) {
	if req.Limit < 1 {
		return "", nil, fmt.Errorf("outbox: claim: limit must be at least 1, got %d", req.Limit)
	}
	if req.Lease <= 0 {
		return "", nil, fmt.Errorf("outbox: claim: lease must be positive, got %s", req.Lease)
	}
	if err := s.checkDialect(ctx); err != nil {
		return "", nil, fmt.Errorf("outbox: claim: %w", err)
	}
	token := uuid.NewString()
	var rows []Row
	var err error
	switch s.t.dialect {
	case PostgreSQL:
		rows, err = s.claimPostgres(ctx, token, req)
	case MySQL:
		rows, err = s.claimMySQL(ctx, token, req)
	default:
		rows, err = s.claimSQLite(ctx, token, req)
	}
	if err != nil {
		return "", nil, fmt.Errorf("outbox: claim: %w", markContention(err))
	}
	slices.SortFunc(rows, func(a, b Row) int { return int(a.ID - b.ID) })
	return token, rows, nil
}

func (s *SQLStore) claimPostgres(ctx context.Context, token string, req ClaimRequest) ([]Row, error) {
	c := s.postgresClaim(token, req)
	var rows []Row
	err := inTx(ctx, s.db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, c.prepare, c.prepareArgs...); err != nil {
			return err
		}
		var err error
		rows, err = s.queryRows(ctx, tx, c.query, c.args)
		return err
	})
	return rows, err
}

// postgresClaim is a PostgreSQL claim: prepare runs first in the claim's
// transaction, then query returns the claimed rows.
type postgresClaim struct {
	prepare     string
	prepareArgs []any
	query       string
	args        []any
}

func (s *SQLStore) postgresClaim(token string, req ClaimRequest) postgresClaim {
	args := []any{token, req.Limit, req.Lease.Microseconds()}
	topics, topicArgs := req.Topics.sql(s.t.dialect, "o.topic", 4)
	args = append(args, topicArgs...)
	q := `WITH c AS (SELECT o.id FROM ` + s.t.quoted + ` o WHERE ` + s.claimFilter(topics, req.Ordered) +
		` ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE ` + s.t.quoted + ` t SET claim_token = $1, claimed_until = ` + s.plus(3) + ` FROM c WHERE t.id = c.id
RETURNING ` + s.rowColumns("t.")
	// The claim must walk pending_idx in id order and stop at the limit. A
	// queue table's statistics are nearly always stale (a backlog appears
	// and drains between two autovacuum runs), and with an estimate of a few
	// pending rows the planner prefers a bitmap scan of every pending row
	// plus a sort, evaluating the ordered filter on each: measured 200 ms
	// instead of 4 ms per claim on a fresh 20,000-row backlog. Plan
	// settings local to the transaction rule that out (and suit a pooler in
	// transaction mode).
	//
	// Ordered claims are also serialised per table: a claim that ran beside
	// another could see a key's head row as free while the other takes it,
	// and claim the rows behind it. The lock is held until the claim
	// commits, right after its one statement.
	c := postgresClaim{
		prepare: `SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)`,
		query:   q,
		args:    args,
	}
	if req.Ordered {
		c.prepare += `, pg_advisory_xact_lock($1)`
		c.prepareArgs = append(c.prepareArgs, s.t.lockKey()+1)
	}
	return c
}

func (s *SQLStore) claimMySQL(ctx context.Context, token string, req ClaimRequest) ([]Row, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if req.Ordered {
		// See claimPostgres; MySQL's named lock is per session, so it is
		// taken on this connection and released after the commit.
		name := fmt.Sprintf("watermill-outbox-claim-%x", s.t.lockKey())
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(?, 30)`, name).Scan(&got); err != nil {
			return nil, err
		}
		if got.Int64 != 1 {
			return nil, errors.New("claim lock not taken within 30s")
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT RELEASE_LOCK(?)`, name) //nolint:errcheck // freed with the session too
	}
	// READ COMMITTED: the locking read takes record locks only, no gap
	// locks that would block application INSERTs into the table.
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	// Candidates first, by a plain read, which locks nothing; then the
	// candidates are locked by primary key, in id order, and checked
	// again. An ack locks the primary key record before the pending index
	// entry; a locking scan of the pending index would lock them the other
	// way round, and the two deadlocked (measured: one to six "Error 1213"
	// per run of three relays on MariaDB).
	topics, topicArgs := req.Topics.sql(s.t.dialect, "o.topic", 1)
	filter := s.claimFilter(topics, req.Ordered)
	candidates, err := queryIDs(ctx, tx, `SELECT o.id FROM `+s.t.quoted+` o WHERE `+filter+` ORDER BY o.id LIMIT ?`,
		append(slices.Clone(topicArgs), req.Limit))
	if err != nil || len(candidates) == 0 {
		return nil, err
	}
	// Ordered claims are serialised by the named lock, so they need not
	// skip locked rows, and must not: InnoDB briefly locks rows an ack's
	// DELETE examines without deleting them, and skipping such a row (a
	// key's unleased head) would let the claim take the rows behind it.
	skipLocked := " SKIP LOCKED"
	if req.Ordered {
		skipLocked = ""
	}
	in, idArgs := s.idList(1, candidates) // MySQL binds in textual order
	q := `SELECT ` + s.rowColumns("o.") + ` FROM ` + s.t.quoted + ` o WHERE o.` + in +
		` AND ` + filter + ` ORDER BY o.id FOR UPDATE` + skipLocked
	rows, err := s.queryRows(ctx, tx, q, append(idArgs, topicArgs...))
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	in, idArgs = s.idList(3, ids)
	if _, err := tx.ExecContext(ctx, `UPDATE `+s.t.quoted+` SET claim_token = ?, claimed_until = `+s.plus(2)+` WHERE `+in,
		append([]any{token, req.Lease.Microseconds()}, idArgs...)...); err != nil {
		return nil, err
	}
	if s.claimHook != nil {
		s.claimHook()
	}
	return rows, tx.Commit()
}

func (s *SQLStore) claimSQLite(ctx context.Context, token string, req ClaimRequest) ([]Row, error) {
	// One statement under SQLite's single write lock: claims never overlap,
	// so the ordered filter needs no extra lock.
	args := []any{token, req.Lease.Microseconds()}
	topics, topicArgs := req.Topics.sql(s.t.dialect, "o.topic", 3)
	args = append(append(args, topicArgs...), req.Limit)
	q := `UPDATE ` + s.t.quoted + ` SET claim_token = ?, claimed_until = ` + s.plus(2) +
		` WHERE id IN (SELECT o.id FROM ` + s.t.quoted + ` o WHERE ` + s.claimFilter(topics, req.Ordered) +
		` ORDER BY o.id LIMIT ?) RETURNING ` + s.rowColumns("")
	return s.queryRows(ctx, s.db, q, args)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryIDs runs q, which selects one integer column.
func queryIDs(ctx context.Context, db querier, q string, args []any) ([]int64, error) {
	rs, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var ids []int64
	for rs.Next() {
		var id int64
		if err := rs.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rs.Err()
}

func (s *SQLStore) queryRows(ctx context.Context, db querier, q string, args []any) ([]Row, error) {
	var out []Row
	err := s.scanRows(ctx, db, q, args, func(r Row, _ sql.NullString) { out = append(out, r) }, false)
	return out, err
}

// scanRows runs q, which selects rowColumns (and last_error when
// withLastError), and hands each row to fn. It is the one place rows are
// read: metadata decoded, a NULL key made "", a nil payload made empty.
func (s *SQLStore) scanRows(ctx context.Context, db querier, q string, args []any, fn func(Row, sql.NullString), withLastError bool) error {
	rs, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		var r Row
		var key, lastErr sql.NullString
		var md []byte
		var created int64
		dest := []any{&r.ID, &r.UUID, &r.Topic, &key, &r.Payload, &md, &created, &r.Attempts}
		if withLastError {
			dest = append(dest, &lastErr)
		}
		if err := rs.Scan(dest...); err != nil {
			return err
		}
		r.PartitionKey = key.String
		r.CreatedAt = time.UnixMicro(created)
		if len(md) > 0 {
			if err := json.Unmarshal(md, &r.Metadata); err != nil {
				return fmt.Errorf("row %d: metadata: %w", r.ID, err)
			}
		}
		if r.Payload == nil {
			r.Payload = []byte{}
		}
		fn(r, lastErr)
	}
	return rs.Err()
}

// exec runs a fenced write and returns the rows it changed.
func (s *SQLStore) exec(ctx context.Context, op, q string, args ...any) (int, error) {
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: %s: %w", op, markContention(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("outbox: %s: %w", op, err)
	}
	return int(n), nil
}

// MarkPublished implements Store.
func (s *SQLStore) MarkPublished(ctx context.Context, token string, ids []int64, keep bool) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.dialect.placeholder
	in, idArgs := s.idList(2, ids)
	if !keep {
		return s.exec(ctx, "mark published", `DELETE FROM `+s.t.quoted+` WHERE claim_token = `+p(1)+` AND `+in,
			append([]any{token}, idArgs...)...)
	}
	return s.exec(ctx, "mark published", `UPDATE `+s.t.quoted+` SET state = 'published', published_at = `+s.now()+
		`, claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(1)+` AND `+in,
		append([]any{token}, idArgs...)...)
}

// RecordFailure implements Store.
func (s *SQLStore) RecordFailure(ctx context.Context, token string, id int64, lastError string, delay time.Duration) (int, error) {
	p := s.t.dialect.placeholder
	return s.exec(ctx, "record failure", `UPDATE `+s.t.quoted+` SET attempts = attempts + 1, last_error = `+p(1)+
		`, available_at = `+s.plus(2)+`, claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(3)+` AND id = `+p(4),
		truncateError(lastError), max(delay, 0).Microseconds(), token, id)
}

// MarkDead implements Store.
func (s *SQLStore) MarkDead(ctx context.Context, token string, id int64, lastError string) (int, error) {
	p := s.t.dialect.placeholder
	return s.exec(ctx, "mark dead", `UPDATE `+s.t.quoted+` SET state = 'dead', attempts = attempts + 1, last_error = `+p(1)+
		`, claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(2)+` AND id = `+p(3),
		truncateError(lastError), token, id)
}

// Renew implements Store.
func (s *SQLStore) Renew(ctx context.Context, token string, ids []int64, lease time.Duration) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.dialect.placeholder
	in, idArgs := s.idList(3, ids)
	return s.exec(ctx, "renew", `UPDATE `+s.t.quoted+` SET claimed_until = `+s.plus(1)+
		` WHERE claim_token = `+p(2)+` AND `+in, append([]any{lease.Microseconds(), token}, idArgs...)...)
}

// Release implements Store.
func (s *SQLStore) Release(ctx context.Context, token string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	p := s.t.dialect.placeholder
	in, idArgs := s.idList(2, ids)
	return s.exec(ctx, "release", `UPDATE `+s.t.quoted+` SET claim_token = NULL, claimed_until = NULL WHERE claim_token = `+p(1)+` AND `+in,
		append([]any{token}, idArgs...)...)
}

// PurgePublished implements Store.
func (s *SQLStore) PurgePublished(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	if limit < 1 {
		return 0, nil
	}
	p := s.t.dialect.placeholder
	// MySQL cannot DELETE from a table it selects from in a subquery, but
	// takes ORDER BY and LIMIT on DELETE itself.
	if s.t.dialect == MySQL {
		return s.exec(ctx, "purge published", `DELETE FROM `+s.t.quoted+` WHERE state = 'published' AND published_at <= `+s.minus(1)+
			` ORDER BY published_at LIMIT `+p(2), olderThan.Microseconds(), limit)
	}
	return s.exec(ctx, "purge published", `DELETE FROM `+s.t.quoted+` WHERE id IN (SELECT id FROM `+s.t.quoted+
		` WHERE state = 'published' AND published_at <= `+s.minus(1)+` ORDER BY published_at LIMIT `+p(2)+`)`,
		olderThan.Microseconds(), limit)
}

// DeadRow is a row the relay gave up on.
type DeadRow struct {
	Row
	LastError string
}

// DeadQuery pages through dead rows.
type DeadQuery struct {
	// Topic limits the list to one destination topic; "" lists all.
	Topic string
	// AfterID is the cursor: only rows with a larger id are listed. Pass
	// the last ID of the previous page; zero starts at the beginning.
	AfterID int64
	// Limit is the page size, in rows. Default 100; zero means the
	// default. At most 10,000.
	Limit int
}

// ListDead returns one page of dead rows, in id order (oldest first), for
// inspection.
func (s *SQLStore) ListDead(ctx context.Context, q DeadQuery) ([]DeadRow, error) {
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit < 0 || q.Limit > config.MaxBatchSize {
		return nil, fmt.Errorf("outbox: list dead: limit must be between 1 and %d, got %d", config.MaxBatchSize, q.Limit)
	}
	p := s.t.dialect.placeholder
	where := `state = 'dead' AND id > ` + p(1)
	args := []any{q.AfterID}
	if q.Topic != "" {
		where += ` AND topic = ` + p(2)
		args = append(args, q.Topic)
	}
	args = append(args, q.Limit)
	query := `SELECT ` + s.rowColumns("") + `, last_error FROM ` + s.t.quoted +
		` WHERE ` + where + ` ORDER BY id LIMIT ` + p(len(args))
	var out []DeadRow
	err := s.scanRows(ctx, s.db, query, args, func(r Row, lastErr sql.NullString) {
		out = append(out, DeadRow{Row: r, LastError: lastErr.String})
	}, true)
	if err != nil {
		return nil, fmt.Errorf("outbox: list dead: %w", err)
	}
	return out, nil
}

// Requeue makes dead rows pending and due again with a fresh retry
// budget; last_error is kept until the next failure. It returns how many
// rows it requeued (rows that are not dead are left alone).
func (s *SQLStore) Requeue(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	in, args := s.idList(1, ids)
	return s.exec(ctx, "requeue", `UPDATE `+s.t.quoted+` SET state = 'pending', attempts = 0, available_at = `+s.now()+
		`, claim_token = NULL, claimed_until = NULL WHERE state = 'dead' AND `+in, args...)
}

// PurgeDead deletes dead rows for good, returning how many it deleted.
func (s *SQLStore) PurgeDead(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	in, args := s.idList(1, ids)
	return s.exec(ctx, "purge dead", `DELETE FROM `+s.t.quoted+` WHERE state = 'dead' AND `+in, args...)
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
