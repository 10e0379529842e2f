package watermilloutbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Behind a transaction pooler a claim's statements cannot be prepared at
// the protocol level (stmtMode), and unnamed they are planned at every
// claim: 2.3 ms of an idle claim's 3.7 ms through PgBouncer went to
// planning, against 0.05 ms direct with cached plans. So on a pipeTx whose
// mode says unnamed the claim prepares its statements with SQL PREPARE on
// the server connection its transaction runs on, and runs them with
// EXECUTE: a plan then outlives the transaction, as a named statement's
// does directly, and the pooler has no statement names to track.
//
// Each batch is one simple-protocol query. The one that opens the
// transaction sends BEGIN, then EXECUTEs a check that the server
// connection holds every statement the store has named so far, then its
// own. Where one is missing (a server connection new to the store, or one
// whose statements another client deallocated) the check or the EXECUTE
// fails; the batch is rolled back and sent again after a DO block that
// prepares what is missing (pg_prepared_statements). Within the
// transaction the server connection is the claim's alone, so a later batch
// finds what the first one checked; one with a statement named since
// prepares it in a DO block of its own. The arguments become literals:
// each is encoded as the unnamed statement would send it (text format)
// and quoted, so the server reads it through the same type input
// function.
//
// A statement's name is pooledPrefix and a hash of its text, which holds
// the table and the relay: two stores or relays share a name only when
// they share the statement. A server connection keeps what was prepared on
// it until it closes; to bound that across the relays that come and go in
// its life, a DO block that finds more than pooledMaxPerConn of them there
// first deallocates the oldest its store did not name.

// pooledPrefix starts the name of every statement the store prepares with
// SQL PREPARE.
const pooledPrefix = "watermill_outbox_"

// pooledMaxPerConn is how many of the stores' prepared statements a server
// connection may hold before a DO block deallocates the oldest its store
// did not name (a claim's plans take tens of kilobytes of the server's
// memory each); pooledMaxPerStore is how many distinct statements one
// store names (the rest run unnamed).
const (
	pooledMaxPerConn  = 128
	pooledMaxPerStore = 32
)

// pooledCheck is the statement that checks a server connection holds the
// named statements ($1): it fails (division by zero) when one is missing.
const pooledCheck = `SELECT 1 / (count(*) = cardinality($1::text[]))::int FROM pg_prepared_statements WHERE name = ANY($1::text[])`

// pooledNames remembers the names of the statements a store prepares.
type pooledNames struct {
	mu    sync.Mutex
	names map[string]string // statement text → name
}

// name returns q's statement name, or "" when q must run unnamed: the
// store has named pooledMaxPerStore statements already, or q's text could
// not be quoted in the DO block.
func (p *pooledNames) name(q string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n, ok := p.names[q]; ok {
		return n
	}
	if len(p.names) >= pooledMaxPerStore || strings.Contains(q, "$wmo") {
		return ""
	}
	if p.names == nil {
		p.names = map[string]string{}
	}
	n := pooledName(q)
	p.names[q] = n
	return n
}

func pooledName(q string) string {
	sum := sha256.Sum256([]byte(q))
	return pooledPrefix + hex.EncodeToString(sum[:12])
}

// all returns every statement named so far, the check included: name →
// text.
func (p *pooledNames) all() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	all := make(map[string]string, len(p.names)+1)
	for q, n := range p.names {
		all[n] = q
	}
	all[pooledName(pooledCheck)] = pooledCheck
	return all
}

// sendPooled is send behind a pooler (see above). ok is false when the
// batch cannot go this way (a statement without a name, an argument not
// encoded as text, the server not reading standard strings): send then
// runs it unnamed.
func (t *pipeTx) sendPooled(ctx context.Context, items []pipeItem, commit bool) (out []*bufferedRows, ok bool, err error) {
	if t.conn.PgConn().ParameterStatus("standard_conforming_strings") != "on" {
		return nil, false, nil
	}
	run := make([]string, len(items))
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = t.mode.pooled.name(it.q)
		if names[i] == "" {
			return nil, false, nil
		}
		lits, ok, err := t.literals(it.args)
		if err != nil || !ok {
			return nil, ok, err
		}
		run[i] = `EXECUTE ` + names[i]
		if len(lits) > 0 {
			run[i] += `(` + strings.Join(lits, ", ") + `)`
		}
	}
	if t.begun {
		// The opening batch checked or prepared what was named then.
		prepare := map[string]string{}
		for i, n := range names {
			if !t.ready[n] {
				prepare[n] = items[i].q
			}
		}
		out, err := t.runPooled(ctx, items, run, commit, prepare, nil)
		return out, true, err
	}
	all := t.mode.pooled.all()
	check := make([]string, 0, len(all))
	for n := range all {
		check = append(check, n)
	}
	out, err = t.runPooled(ctx, items, run, commit, nil, check)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || (pgErr.Code != "26000" && pgErr.Code != "22012") {
		return out, true, err
	}
	// A statement is missing here (26000, or the check's division by
	// zero): prepare them all, in a transaction anew.
	if _, err := t.conn.Exec(ctx, "ROLLBACK"); err != nil {
		return nil, true, err
	}
	t.begun = false
	t.trips += 2
	out, err = t.runPooled(ctx, items, run, commit, all, nil)
	return out, true, err
}

// runPooled sends one batch: BEGIN when the transaction is not begun, a DO
// block preparing the statements of prepare (name → text) the server
// connection lacks, the check of the names in check, the EXECUTEs in run,
// and COMMIT when commit.
func (t *pipeTx) runPooled(ctx context.Context, items []pipeItem, run []string, commit bool, prepare map[string]string, check []string) ([]*bufferedRows, error) {
	var q strings.Builder
	if !t.begun {
		q.WriteString(`BEGIN;`)
	}
	skip := 0
	if len(prepare) > 0 {
		skip++
		writePrepare(&q, prepare, t.mode.pooled.all())
	}
	if len(check) > 0 {
		skip++
		q.WriteString(`EXECUTE ` + pooledName(pooledCheck) + `('{` + strings.Join(check, ",") + `}');`)
	}
	for _, r := range run {
		q.WriteString(r + `;`)
	}
	if commit {
		q.WriteString(`COMMIT;`)
	}
	mrr := t.conn.PgConn().Exec(ctx, q.String())
	out, err := t.read(mrr, items, commit, skip)
	if cerr := mrr.Close(); err == nil || errors.Is(err, errBatchShort) && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if t.ready == nil {
		t.ready = map[string]bool{}
	}
	for n := range prepare {
		t.ready[n] = true
	}
	for _, n := range check {
		t.ready[n] = true
	}
	return out, nil
}

// writePrepare writes the DO block that prepares the statements of prepare
// (name → text) the server connection lacks. Before, if the connection
// holds more than pooledMaxPerConn statements of the stores, it deallocates
// the oldest of those its store (keep: every name it has) did not name,
// down to half that: a dead relay's are the oldest, and a live one's that
// go prepare again. Names are hex hashes and texts hold no $wmo: both
// quote safely.
func writePrepare(q *strings.Builder, prepare, keep map[string]string) {
	kept := make([]string, 0, len(keep))
	for n := range keep {
		kept = append(kept, n)
	}
	ours := `FROM pg_prepared_statements WHERE left(name, ` + strconv.Itoa(len(pooledPrefix)) + `) = '` + pooledPrefix + `'`
	q.WriteString(`DO $wmo$DECLARE r record; held int; BEGIN SELECT count(*) INTO held ` + ours + `; IF held > ` + strconv.Itoa(pooledMaxPerConn) +
		` THEN FOR r IN SELECT name ` + ours + ` AND name <> ALL ('{` + strings.Join(kept, ",") + `}') ORDER BY prepare_time LIMIT held - ` +
		strconv.Itoa(pooledMaxPerConn/2) + ` LOOP EXECUTE 'DEALLOCATE ' || r.name; END LOOP; END IF; FOR r IN SELECT v.n, v.q FROM (VALUES `)
	first := true
	for n, text := range prepare {
		if !first {
			q.WriteString(`, `)
		}
		first = false
		q.WriteString(`('` + n + `', $wmoq$` + text + `$wmoq$)`)
	}
	q.WriteString(`) v(n, q) WHERE v.n NOT IN (SELECT name FROM pg_prepared_statements) LOOP EXECUTE 'PREPARE ' || r.n || ' AS ' || r.q; END LOOP; END$wmo$;`)
}

// literals encodes args as SQL literals, as the unnamed statement would
// send them (pgx.QueryExecModeExec: text format); ok is false if one is
// not text.
func (t *pipeTx) literals(args []any) ([]string, bool, error) {
	if len(args) == 0 {
		return nil, true, nil
	}
	var eqb pgx.ExtendedQueryBuilder
	if err := eqb.Build(t.conn.TypeMap(), nil, args); err != nil {
		return nil, false, err
	}
	lits := make([]string, len(eqb.ParamValues))
	for i, v := range eqb.ParamValues {
		switch {
		case i < len(eqb.ParamFormats) && eqb.ParamFormats[i] != pgx.TextFormatCode:
			return nil, false, nil
		case v == nil:
			lits[i] = "NULL"
		default:
			lits[i] = `'` + strings.ReplaceAll(string(v), `'`, `''`) + `'`
		}
	}
	return lits, true, nil
}
