package watermilloutbox

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// The store runs every statement through these small interfaces, so the
// same SQL serves a database/sql *sql.DB (any dialect) and a pgx pool
// (PostgreSQL): sqlDB and pgxDB below.

// queryer runs statements: a database handle or one of its transactions.
type queryer interface {
	exec(ctx context.Context, q string, args ...any) (int64, error)
	query(ctx context.Context, q string, args ...any) (rows, error)
	queryRow(ctx context.Context, q string, args ...any) row
}

// rows is a result set: *sql.Rows or pgx.Rows.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// row is a single-row result.
type row interface{ Scan(dest ...any) error }

// tx is a transaction.
type tx interface {
	queryer
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

// database is the store's handle.
type database interface {
	queryer
	// begin starts a transaction, at READ COMMITTED when readCommitted
	// (MySQL's claims), else at the database's default.
	begin(ctx context.Context, readCommitted bool) (tx, error)
	ping(ctx context.Context) error
	// withPgxConn runs fn on a connection of its own that is closed
	// afterwards, never returned to the pool (a LISTEN stays with it).
	withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error
	// maxConns is the pool's connection limit; 0 when unlimited.
	maxConns() int
	// driver names the driver, for errors.
	driver() string
}

// inTx runs fn in a transaction of db, committing when it returns nil.
func inTx(ctx context.Context, db database, fn func(tx tx) error) error {
	t, err := db.begin(ctx, false)
	if err != nil {
		return err
	}
	if err := fn(t); err != nil {
		return errors.Join(err, t.rollback(ctx))
	}
	return t.commit(ctx)
}

// stmtMode says how the store's own statements run on pgx (a pgx pool, or
// a *sql.DB over pgx's database/sql driver).
//
// pgx's default caches a named prepared statement per query on the server
// connection. A transaction pooler (PgBouncer's pool_mode = transaction,
// or a managed pooler that works the same way) hands that server
// connection to other clients: the next one to prepare the same query
// fails with "prepared statement … already exists" (42P05), one that finds
// its statement gone with "does not exist". So until the store has seen
// that it talks to PostgreSQL itself, its statements run in
// pgx.QueryExecModeExec: the unnamed statement, one round trip, nothing
// left on the server connection. The check (detectPooler, at the store's
// first use of its pool) compares the backend pid the connection's
// startup announced with pg_backend_pid(): a pooler answers the startup
// with a cancel key of its own. Once direct, the statements run in the
// connection's own mode again, whose cached plans keep an idle claim at
// about a third of a millisecond (planning the claim's statements on every
// run cost it several).
type stmtMode struct {
	direct atomic.Bool
	pooled pooledNames // the claim's statements behind a pooler (pooled.go)
}

// unnamed reports whether statements must avoid named prepared
// statements; a nil mode (a pgx.Tx of the caller's, before the store's
// mode is known) must.
func (m *stmtMode) unnamed() bool { return m == nil || !m.direct.Load() }

// sqlDB is a database/sql handle.
type sqlDB struct {
	sqlQueryer
	db *sql.DB
}

// newSQLDB returns the handle of db; mode is nil unless db's driver is
// pgx's.
func newSQLDB(db *sql.DB, mode *stmtMode) sqlDB { return sqlDB{sqlQueryer{db, mode}, db} }

// isPgxDriver reports whether db uses pgx's database/sql driver.
func isPgxDriver(db *sql.DB) bool {
	_, ok := db.Driver().(*stdlib.Driver)
	return ok
}

// sqlExec is what *sql.DB, *sql.Tx and *sql.Conn share.
type sqlExec interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// sqlQueryer adapts a sqlExec to queryer.
type sqlQueryer struct {
	e sqlExec
	// mode is set when the driver is pgx's, which takes a
	// pgx.QueryExecMode as a first argument (any other driver would refuse
	// it); nil otherwise.
	mode *stmtMode
}

// args prepends pgx.QueryExecModeExec while the mode says unnamed.
func (q sqlQueryer) args(args []any) []any {
	if q.mode == nil || !q.mode.unnamed() {
		return args
	}
	return append([]any{pgx.QueryExecModeExec}, args...)
}

func (q sqlQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	res, err := q.e.ExecContext(ctx, s, q.args(args)...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q sqlQueryer) query(ctx context.Context, s string, args ...any) (rows, error) {
	rs, err := q.e.QueryContext(ctx, s, q.args(args)...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rs}, nil
}

func (q sqlQueryer) queryRow(ctx context.Context, s string, args ...any) row {
	return q.e.QueryRowContext(ctx, s, q.args(args)...)
}

// sqlRows drops *sql.Rows' Close error: Err reports what matters.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

func (d sqlDB) begin(ctx context.Context, readCommitted bool) (tx, error) {
	var opts *sql.TxOptions
	if readCommitted {
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	t, err := d.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return sqlTx{sqlQueryer{t, d.mode}, t}, nil
}

func (d sqlDB) ping(ctx context.Context) error { return d.db.PingContext(ctx) }

func (d sqlDB) withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	return d.withConn(ctx, func(c *pgx.Conn) error {
		// driver.ErrBadConn: database/sql discards the connection.
		return errors.Join(fn(c), driver.ErrBadConn)
	})
}

func (d sqlDB) maxConns() int { return d.db.Stats().MaxOpenConnections }

func (d sqlDB) driver() string { return fmt.Sprintf("%T", d.db.Driver()) }

// ownQueryer returns q, a caller's transaction, running the store's
// statements in the store's mode (stmtMode).
func (s *SQLStore) ownQueryer(q queryer) queryer {
	switch q := q.(type) {
	case sqlQueryer:
		q.mode = s.mode
		return q
	case pgxTxQueryer:
		q.mode = s.mode
		return q
	}
	return q
}

// sqlTx is a database/sql transaction.
type sqlTx struct {
	sqlQueryer
	t *sql.Tx
}

func (t sqlTx) commit(context.Context) error   { return t.t.Commit() }
func (t sqlTx) rollback(context.Context) error { return t.t.Rollback() }

// pgxDB is a pgx pool (PostgreSQL only).
type pgxDB struct {
	pgxQueryer
	pool *pgxpool.Pool
}

func newPgxDB(pool *pgxpool.Pool, mode *stmtMode) pgxDB { return pgxDB{pgxQueryer{pool, mode}, pool} }

// pgxExec is what *pgxpool.Pool, pgx.Tx and *pgx.Conn share.
type pgxExec interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgxQueryer adapts a pgxExec to queryer; its statements run as mode says.
type pgxQueryer struct {
	e    pgxExec
	mode *stmtMode
}

// args prepends pgx.QueryExecModeExec while the mode says unnamed.
func (q pgxQueryer) args(args []any) []any {
	if !q.mode.unnamed() {
		return args
	}
	return append([]any{pgx.QueryExecModeExec}, args...)
}

func (q pgxQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	tag, err := q.e.Exec(ctx, s, q.args(args)...)
	return tag.RowsAffected(), err
}

func (q pgxQueryer) query(ctx context.Context, s string, args ...any) (rows, error) {
	return q.e.Query(ctx, s, q.args(args)...)
}

func (q pgxQueryer) queryRow(ctx context.Context, s string, args ...any) row {
	return q.e.QueryRow(ctx, s, q.args(args)...)
}

func (d pgxDB) begin(ctx context.Context, readCommitted bool) (tx, error) {
	var opts pgx.TxOptions
	if readCommitted {
		opts.IsoLevel = pgx.ReadCommitted
	}
	t, err := d.pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return pgxTx{pgxQueryer{t, d.mode}, t}, nil
}

func (d pgxDB) ping(ctx context.Context) error { return d.pool.Ping(ctx) }

func (d pgxDB) withPgxConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := c.Hijack() // the pool forgets it: it is closed here
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

func (d pgxDB) maxConns() int { return int(d.pool.Config().MaxConns) }

func (d pgxDB) driver() string { return "pgx pool" }

// pgxTx is a pgx transaction.
type pgxTx struct {
	pgxQueryer
	t pgx.Tx
}

func (t pgxTx) commit(ctx context.Context) error   { return t.t.Commit(ctx) }
func (t pgxTx) rollback(ctx context.Context) error { return t.t.Rollback(ctx) }

// pgxTxQueryer is a caller's pgx transaction: a closed one answers with an
// error wrapping sql.ErrTxDone as well as pgx.ErrTxClosed, as a finished
// *sql.Tx answers with sql.ErrTxDone.
type pgxTxQueryer struct{ pgxQueryer }

func (q pgxTxQueryer) exec(ctx context.Context, s string, args ...any) (int64, error) {
	n, err := q.pgxQueryer.exec(ctx, s, args...)
	if errors.Is(err, pgx.ErrTxClosed) {
		err = fmt.Errorf("%w: %w", sql.ErrTxDone, err)
	}
	return n, err
}

// pgxConner is a database whose connections are pgx's: the PostgreSQL
// claim then sends its statements in pipelined batches (pipeTx).
type pgxConner interface {
	// withConn runs fn on a connection of the pool, returned to it after
	// (closed first when fn left it unusable).
	withConn(ctx context.Context, fn func(*pgx.Conn) error) error
}

func (d sqlDB) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		pc, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok {
			return errNotPgx
		}
		return fn(pc.Conn())
	})
}

func (d pgxDB) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release() // a closed connection is destroyed, not reused
	return fn(c.Conn())
}

// pipeTx is a transaction on one pgx connection that sends statements which
// do not depend on each other in one round trip: BEGIN with the claim's
// first reads (prefetch), and the take with COMMIT (send with commit). The
// claim's code runs on it as on any tx; a statement it prefetched is
// answered from the buffer when a step asks for it by its id (runStmt,
// queryStmt), any other goes to the database.
type pipeTx struct {
	conn     *pgx.Conn
	mode     *stmtMode
	begun    bool
	done     bool // committed or rolled back
	prefetch map[stmtID]*bufferedRows
	execs    map[stmtID]int64
	trips    int             // round trips to the database so far
	ready    map[string]bool // statements prepared here (pooled.go)
}

// stmtID names a statement a claim sends ahead (claimOpening), so the step
// that runs it finds its result by what it is, never by its text.
type stmtID uint8

const (
	adHoc       stmtID = iota // sent when asked for, never ahead
	promoteStmt               // the promotion of due waiting rows
	keylessStmt               // the keyless rows
	visitStmt                 // the first visit of the keyed rows
)

// stmt is a statement with its arguments and, if it may be sent ahead,
// its id.
type stmt struct {
	id   stmtID
	q    string
	args []any
}

// pipeItem is one statement of a batch: a query whose rows read takes
// (or, read nil, buffers), or an exec (exec set).
type pipeItem struct {
	stmt
	exec bool
	read func(rows) error
}

// runStmt runs st in tx, or takes its result from what tx prefetched.
func runStmt(ctx context.Context, tx tx, st stmt) (int64, error) {
	if p, ok := tx.(*pipeTx); ok && st.id != adHoc {
		if n, ok := p.execs[st.id]; ok {
			delete(p.execs, st.id)
			return n, nil
		}
	}
	return tx.exec(ctx, st.q, st.args...)
}

// queryStmt is runStmt for a query.
func queryStmt(ctx context.Context, tx tx, st stmt) (rows, error) {
	if p, ok := tx.(*pipeTx); ok && st.id != adHoc {
		if b, ok := p.prefetch[st.id]; ok {
			delete(p.prefetch, st.id)
			return b, nil
		}
	}
	return tx.query(ctx, st.q, st.args...)
}

// send runs items in one round trip (after BEGIN, when not begun yet),
// buffering what they return for the queries and execs that follow.
func (t *pipeTx) send(ctx context.Context, items []pipeItem, commit bool) ([]*bufferedRows, error) {
	t.trips++
	if t.mode.unnamed() {
		if out, ok, err := t.sendPooled(ctx, items, commit); ok {
			return out, err
		}
		return t.sendUnnamed(ctx, items, commit)
	}
	b := &pgx.Batch{}
	if !t.begun {
		b.Queue("BEGIN")
	}
	for _, it := range items {
		b.Queue(it.q, it.args...)
	}
	if commit {
		b.Queue("COMMIT")
	}
	br := t.conn.SendBatch(ctx, b)
	defer br.Close()
	if !t.begun {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
		t.begun = true
	}
	out := make([]*bufferedRows, len(items))
	for i, it := range items {
		if it.exec {
			tag, err := br.Exec()
			if err != nil {
				return nil, err
			}
			t.keepExec(it.id, tag.RowsAffected())
			continue
		}
		rs, err := br.Query()
		if err != nil {
			return nil, err
		}
		if it.read != nil {
			err := it.read(rs)
			rs.Close()
			if err == nil {
				err = rs.Err()
			}
			if err != nil {
				return nil, err
			}
			continue
		}
		buf, err := buffer(rs, t.conn.TypeMap())
		if err != nil {
			return nil, err
		}
		out[i] = buf
	}
	if commit {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
		t.done = true
	}
	return out, br.Close()
}

// sendUnnamed is send for a connection that may go through a pooler
// (stmtMode): the batch is built at the protocol level, each statement
// unnamed, as pgx.QueryExecModeExec runs them; pgx's own batches take the
// connection's default mode, whose named statements a pooler cannot keep.
func (t *pipeTx) sendUnnamed(ctx context.Context, items []pipeItem, commit bool) ([]*bufferedRows, error) {
	var b pgconn.Batch
	var eqb pgx.ExtendedQueryBuilder
	queue := func(q string, args []any) error {
		if err := eqb.Build(t.conn.TypeMap(), nil, args); err != nil {
			return err
		}
		b.ExecParams(q, eqb.ParamValues, nil, eqb.ParamFormats, eqb.ResultFormats)
		return nil
	}
	if !t.begun {
		_ = queue("BEGIN", nil)
	}
	for _, it := range items {
		if err := queue(it.q, it.args); err != nil {
			return nil, err
		}
	}
	if commit {
		_ = queue("COMMIT", nil)
	}
	mrr := t.conn.PgConn().ExecBatch(ctx, &b)
	out, err := t.read(mrr, items, commit, 0)
	// Close reads to the batch's end and returns its first error, the one
	// read returned or the reason the batch ended early.
	if cerr := mrr.Close(); err == nil || errors.Is(err, errBatchShort) && cerr != nil {
		err = cerr
	}
	return out, err
}

var errBatchShort = errors.New("outbox: batch ended early")

// read takes the results of send's batch in order: BEGIN's if it opened
// the transaction, skip results of statements the batch sent before its
// items, the items', and COMMIT's if it ends the transaction.
func (t *pipeTx) read(mrr *pgconn.MultiResultReader, items []pipeItem, commit bool, skip int) ([]*bufferedRows, error) {
	next := func() (*bufferedRows, int64, error) {
		if !mrr.NextResult() {
			return nil, 0, errBatchShort
		}
		rr := mrr.ResultReader()
		buf := &bufferedRows{types: t.conn.TypeMap(), fields: slices.Clone(rr.FieldDescriptions()), at: -1}
		for rr.NextRow() {
			raw := rr.Values()
			row := make([][]byte, len(raw))
			for i, v := range raw {
				row[i] = bytes.Clone(v) // NULL stays nil; the buffer is reused
			}
			buf.rows = append(buf.rows, row)
		}
		tag, err := rr.Close()
		buf.affected = tag.RowsAffected()
		return buf, buf.affected, err
	}
	if !t.begun {
		if _, _, err := next(); err != nil {
			return nil, err
		}
		t.begun = true
	}
	for range skip {
		if _, _, err := next(); err != nil {
			return nil, err
		}
	}
	out := make([]*bufferedRows, len(items))
	for i, it := range items {
		buf, n, err := next()
		if err != nil {
			return nil, err
		}
		switch {
		case it.exec:
			t.keepExec(it.id, n)
		case it.read != nil:
			if err := it.read(buf); err != nil {
				return nil, err
			}
		default:
			out[i] = buf
		}
	}
	if commit {
		if _, _, err := next(); err != nil {
			return nil, err
		}
		t.done = true
	}
	return out, nil
}

// keepExec keeps the row count of a prefetched exec for runStmt.
func (t *pipeTx) keepExec(id stmtID, n int64) {
	if id == adHoc {
		return
	}
	if t.execs == nil {
		t.execs = map[stmtID]int64{}
	}
	t.execs[id] = n
}

// prefetchAll sends items (with BEGIN) and keeps their results for the
// claim's steps to ask for by id.
func (t *pipeTx) prefetchAll(ctx context.Context, items []pipeItem) error {
	bufs, err := t.send(ctx, items, false)
	if err != nil {
		return err
	}
	for i, it := range items {
		if bufs[i] != nil && it.id != adHoc {
			if t.prefetch == nil {
				t.prefetch = map[stmtID]*bufferedRows{}
			}
			t.prefetch[it.id] = bufs[i]
		}
	}
	return nil
}

func (t *pipeTx) beginNow(ctx context.Context) error {
	if t.begun || t.done {
		return nil
	}
	t.trips++
	if _, err := t.conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	t.begun = true
	return nil
}

// exec and query run a statement the claim did not send ahead. Where
// statements must be unnamed it goes as a batch of its own, so that behind
// a pooler its plan is kept too (pooled.go).
func (t *pipeTx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	if t.mode.unnamed() {
		buf, err := t.sendAlone(ctx, q, args)
		if err != nil {
			return 0, err
		}
		return buf.affected, nil
	}
	if err := t.beginNow(ctx); err != nil {
		return 0, err
	}
	t.trips++
	return pgxQueryer{t.conn, t.mode}.exec(ctx, q, args...)
}

func (t *pipeTx) query(ctx context.Context, q string, args ...any) (rows, error) {
	if t.mode.unnamed() {
		buf, err := t.sendAlone(ctx, q, args)
		if err != nil {
			return nil, err // not a nil *bufferedRows in a non-nil rows
		}
		return buf, nil
	}
	if err := t.beginNow(ctx); err != nil {
		return nil, err
	}
	t.trips++
	return pgxQueryer{t.conn, t.mode}.query(ctx, q, args...)
}

// sendAlone sends q as a batch of its own and returns its result.
func (t *pipeTx) sendAlone(ctx context.Context, q string, args []any) (*bufferedRows, error) {
	bufs, err := t.send(ctx, []pipeItem{{stmt: stmt{q: q, args: args}}}, false)
	if err != nil {
		return nil, err
	}
	return bufs[0], nil
}

func (t *pipeTx) queryRow(ctx context.Context, q string, args ...any) row {
	if err := t.beginNow(ctx); err != nil {
		return errRow{err}
	}
	t.trips++
	return pgxQueryer{t.conn, t.mode}.queryRow(ctx, q, args...)
}

func (t *pipeTx) commit(ctx context.Context) error {
	if t.done || !t.begun {
		t.done = true
		return nil
	}
	t.done = true
	t.trips++
	_, err := t.conn.Exec(ctx, "COMMIT")
	return err
}

func (t *pipeTx) rollback(ctx context.Context) error {
	if t.done || !t.begun {
		t.done = true
		return nil
	}
	t.done = true
	t.trips++
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	if _, err := t.conn.Exec(ctx, "ROLLBACK"); err != nil {
		// A connection left in a transaction must not go back to the pool.
		_ = t.conn.Close(ctx)
		return err
	}
	return nil
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// bufferedRows is a result read to its end and decoded later, by pgx as
// the pgx.Rows it came from would have been: its raw values are copied
// because the connection's buffer is reused by the next statement.
type bufferedRows struct {
	types    *pgtype.Map
	fields   []pgconn.FieldDescription
	rows     [][][]byte
	at       int
	affected int64 // the rows its statement changed (read's results only)
}

func buffer(rs pgx.Rows, types *pgtype.Map) (*bufferedRows, error) {
	defer rs.Close()
	b := &bufferedRows{types: types, fields: slices.Clone(rs.FieldDescriptions()), at: -1}
	for rs.Next() {
		raw := rs.RawValues()
		row := make([][]byte, len(raw))
		for i, v := range raw {
			row[i] = bytes.Clone(v) // NULL stays nil
		}
		b.rows = append(b.rows, row)
	}
	return b, rs.Err()
}

func (b *bufferedRows) Next() bool { b.at++; return b.at < len(b.rows) }
func (b *bufferedRows) Err() error { return nil }
func (b *bufferedRows) Close()     {}

func (b *bufferedRows) Scan(dest ...any) error {
	return pgx.ScanRow(b.types, b.fields, b.rows[b.at], dest...)
}
