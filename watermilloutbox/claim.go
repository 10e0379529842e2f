package watermilloutbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// How a claim finds its rows, and why its cost follows the rows it returns.
//
// A claim that walked the pending rows in id order and tested each one paid
// for every row it skipped: rows backing off, rows leased by other relays,
// and, with per-key order, every row queued behind a key whose head was
// stuck (100,000 of them behind one poison message made each claim take
// over a second, under a lock every relay waited on). So each kind of row
// has its own path, and none walks rows it cannot take:
//
//   - Rows backing off are marked waiting (RecordFailure) and so are in
//     none of the indexes the claim walks. Each claim first makes those
//     whose delay has passed plain pending rows again (promote), reading
//     only those, through waiting_idx.
//   - Keyless rows come from unkeyed_idx in id order (oldest first).
//   - Keyed rows come key by key from keyed_idx: one index descent finds a
//     key's first row (its head), the next descent the next key. A key
//     whose head is leased or not yet due, or has an earlier row waiting
//     (waiting_key_idx), is passed over at the cost of those descents, its
//     tail never read. From each key whose head is free the claim takes the
//     run of free rows that starts at the head (ordered) or its free rows
//     (unordered), as many as its share of the limit. The walk starts
//     where the store's last one stopped and goes round the key space, so
//     every key gets its turn while a backlog lasts.
//   - Rows leased by live relays are still met on the keyless path; there
//     are at most as many as the relays' in-flight windows.
//
// The candidates are read without locks, then locked with SKIP LOCKED and
// checked again in the same statement. A candidate lost on the way (taken by
// another claim meanwhile, or locked by a late ack) cuts its key's run: the
// rows of that key behind it are not taken. That cut keeps per-key order
// without serialising claims, so several relays claim at once.
//
// A claim walks at most walkBudget(limit) keys. When it stops at that
// budget, or took all it was allowed, Claimed.More asks the relay to claim
// again at once.

// maxChainKeys bounds how many keys one claim reads more than the head of,
// on MySQL and SQLite, which read each key's run with a statement part of
// its own (PostgreSQL's LATERAL join reads any number in one).
const maxChainKeys = 64

// maxWalk bounds the keys one claim visits: each costs an index descent
// (about 9 µs on PostgreSQL, 3 µs on MariaDB), so a claim stays within
// about 20 ms whatever its limit; a larger claim takes several rows a key.
const maxWalk = 2000

// walkBudget is how many keys a claim of limit rows visits at most: as many
// as it could take rows from, and some more for keys passed over.
func walkBudget(limit int) int { return min(limit+limit/2+16, maxWalk) }

// keyPos is a position in the key space: a topic and a partition key.
type keyPos struct{ topic, key string }

// keyCursor is where the last walk over the keys stopped; the next walk
// starts just after it. It is shared by the store's claims.
type keyCursor struct {
	mu  sync.Mutex
	pos keyPos
}

func (c *keyCursor) get() keyPos {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos
}

func (c *keyCursor) set(p keyPos) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pos = p
}

// keyHead is a visited key: its first non-waiting pending row.
type keyHead struct {
	keyPos
	id   int64
	free bool  // due and not leased
	wait int64 // the key's first waiting row, 0 when none
	dead int64 // its first dead row under StrictOrder, 0 when none
}

// blocker is the key's first row that holds the rows after it back:
// waiting, or dead under StrictOrder; 0 when none.
func (h keyHead) blocker() int64 {
	if h.wait == 0 || (h.dead != 0 && h.dead < h.wait) {
		return h.dead
	}
	return h.wait
}

// claimable: ordered claims take from a key only when its head is free and
// no earlier row of it is backing off (or dead, under StrictOrder).
func (h keyHead) claimable() bool { return h.free && (h.blocker() == 0 || h.id < h.blocker()) }

// candidate is a row a claim means to take.
type candidate struct {
	id int64
	// run names the key whose run of rows it belongs to in an ordered claim
	// (topic, NUL, key); "" for rows that need no order.
	run string
}

// Claim implements relaystore.Store.
func (s *SQLStore) Claim(ctx context.Context, req relaystore.ClaimRequest) (relaystore.Claimed, error) {
	if req.Limit < 1 {
		return relaystore.Claimed{}, fmt.Errorf("outbox: claim: limit must be at least 1, got %d", req.Limit)
	}
	if req.Lease <= 0 {
		return relaystore.Claimed{}, fmt.Errorf("outbox: claim: lease must be positive, got %s", req.Lease)
	}
	if req.Relay != "" && !validRelayID(req.Relay) {
		return relaystore.Claimed{}, fmt.Errorf("outbox: claim: invalid relay id %q: want 1 to %d letters, digits and . _ : -", req.Relay, maxRelayID)
	}
	if err := s.checkDialect(ctx); err != nil {
		return relaystore.Claimed{}, fmt.Errorf("outbox: claim: %w", err)
	}
	c := relaystore.Claimed{Token: uuid.NewString()}
	// taking names the rows of a pipelined take once it was sent with its
	// COMMIT: should the claim fail from then on, they may be committed to
	// it, and are given back once its connection is.
	var taking []int64
	run := func(tx tx) error {
		err := s.claim(ctx, tx, req, &c, &taking)
		if err != nil {
			_ = tx.rollback(ctx)
			return err
		}
		if s.claimHook != nil {
			s.claimHook()
		}
		return tx.commit(ctx)
	}
	err := errNotPgx
	if pc, ok := s.db.(pgxConner); ok && s.t.d.pipelined() {
		// On a pgx connection the claim takes two round trips (see
		// pipeTx) instead of six.
		err = pc.withConn(ctx, func(conn *pgx.Conn) error {
			p := &pipeTx{conn: conn, mode: s.mode}
			err := run(p)
			if s.tripsHook != nil {
				s.tripsHook(p.trips)
			}
			return err
		})
		if err != nil && taking != nil {
			s.giveBack(ctx, c.Token, taking)
		}
	}
	if errors.Is(err, errNotPgx) {
		var tx tx
		if tx, err = s.db.begin(ctx, s.t.d.readCommittedClaims()); err == nil {
			err = run(tx)
		}
	}
	if err != nil {
		return relaystore.Claimed{}, fmt.Errorf("outbox: claim: %w", markContention(err))
	}
	slices.SortFunc(c.Rows, func(a, b relaystore.Row) int { return int(a.ID - b.ID) })
	return c, nil
}

// claim runs one claim's steps in tx: promote, find the candidates, take
// them.
func (s *SQLStore) claim(ctx context.Context, tx tx, req relaystore.ClaimRequest, c *relaystore.Claimed, taking *[]int64) error {
	open := s.opening(req)
	if p, ok := tx.(*pipeTx); ok {
		// What the claim reads first depends on nothing read before: one
		// round trip with BEGIN.
		if err := p.prefetchAll(ctx, open.items()); err != nil {
			return fmt.Errorf("open: %w", err)
		}
	}
	if _, err := runStmt(ctx, tx, open.promote); err != nil {
		return fmt.Errorf("promote due rows: %w", err)
	}
	cands, more, err := s.candidates(ctx, tx, req, open)
	if err != nil {
		return err
	}
	if len(cands) > req.Limit {
		cands, more = cands[:req.Limit], true
	}
	c.More = more
	if len(cands) == 0 {
		return nil
	}
	c.Rows, c.TakenOver, err = s.take(ctx, tx, c.Token, req, cands, taking)
	return err
}

// claimOpening is what a claim reads first, each statement built once:
// the pipelined claim sends them ahead with BEGIN, and the steps run the
// same values, which find their results by id (runStmt, queryStmt). So
// what was sent ahead is what the steps ask for.
type claimOpening struct {
	cursor  keyPos // where the walk over the keys starts
	promote stmt   // the promotion of due waiting rows
	keyless stmt   // the keyless rows
	// visit is the first visit of the keyed rows from the cursor (walk,
	// or keyedRows when unordered) over every topic; without a topic
	// filter only, adHoc (zero) otherwise.
	visit stmt
}

// opening builds a claim's opening statements.
func (s *SQLStore) opening(req relaystore.ClaimRequest) claimOpening {
	cq := s.claimQ(req)
	o := claimOpening{cursor: s.cursor.get()}
	q, args := cq.promote(req.Limit)
	o.promote = stmt{id: promoteStmt, q: q, args: args}
	q, args = cq.keyless(req.Topics, req.Limit)
	o.keyless = stmt{id: keylessStmt, q: q, args: args}
	if req.Topics.All() {
		if req.Ordered {
			q, args = cq.walk(nil, o.cursor, walkBudget(req.Limit), req.StrictOrder)
		} else {
			q, args = cq.keyedRows(nil, o.cursor, req.Limit)
		}
		o.visit = stmt{id: visitStmt, q: q, args: args}
	}
	return o
}

// items lists the opening as a batch to send ahead.
func (o claimOpening) items() []pipeItem {
	items := []pipeItem{{stmt: o.promote, exec: true}, {stmt: o.keyless}}
	if o.visit.id != adHoc {
		items = append(items, pipeItem{stmt: o.visit})
	}
	return items
}

// candidates returns the rows a claim means to take, in id order, and
// whether more may be due than it found.
func (s *SQLStore) candidates(ctx context.Context, tx tx, req relaystore.ClaimRequest, open claimOpening) ([]candidate, bool, error) {
	keyless, err := s.keyless(ctx, tx, open.keyless)
	if err != nil {
		return nil, false, fmt.Errorf("keyless rows: %w", err)
	}
	more := len(keyless) >= req.Limit
	var keyed []candidate
	var keyedMore bool
	if req.Ordered {
		keyed, keyedMore, err = s.keyedRuns(ctx, tx, req, open)
	} else {
		keyed, keyedMore, err = s.keyedRows(ctx, tx, req, open)
	}
	if err != nil {
		return nil, false, fmt.Errorf("keyed rows: %w", err)
	}
	all := append(keyless, keyed...)
	// Oldest first across both paths. Within a key's run the ids rise, so
	// cutting the list at the limit keeps each run a run.
	slices.SortFunc(all, func(a, b candidate) int { return int(a.id - b.id) })
	return all, more || keyedMore, nil
}

// keyless reads up to req.Limit due, unleased keyless rows, oldest first
// (st, the opening's).
func (s *SQLStore) keyless(ctx context.Context, tx tx, st stmt) ([]candidate, error) {
	rs, err := queryStmt(ctx, tx, st)
	if err != nil {
		return nil, err
	}
	ids, err := scanColumn[int64](rs)
	out := make([]candidate, len(ids))
	for i, id := range ids {
		out[i] = candidate{id: id}
	}
	return out, err
}

// keyedRuns walks the keys for an ordered claim and returns, for each key
// it may take from, the run of free rows starting at the key's head: at
// most its share of the limit, and never reaching a leased, not yet due or
// waiting row.
func (s *SQLStore) keyedRuns(ctx context.Context, tx tx, req relaystore.ClaimRequest, opening claimOpening) ([]candidate, bool, error) {
	heads, more, err := s.walkKeys(ctx, tx, req, walkBudget(req.Limit), opening)
	if err != nil {
		return nil, false, err
	}
	var open []keyHead
	for _, h := range heads {
		if h.claimable() {
			open = append(open, h)
		}
	}
	if len(open) == 0 {
		return nil, more, nil
	}
	share := (req.Limit + len(open) - 1) / len(open)
	chained := open
	if share > 1 {
		chained = open[:min(len(open), s.t.d.maxChainKeys())]
	}
	var runs map[keyPos][]runRow
	if share > 1 {
		if runs, err = s.runs(ctx, tx, s.claimQ(req), chained, share); err != nil {
			return nil, false, err
		}
	}
	var out []candidate
	for _, h := range open {
		run := h.topic + "\x00" + h.key
		rows, ok := runs[h.keyPos]
		if !ok {
			out = append(out, candidate{id: h.id, run: run})
			continue
		}
		for _, r := range rows {
			if !r.free || r.id < h.id || (h.blocker() != 0 && r.id > h.blocker()) {
				break
			}
			out = append(out, candidate{id: r.id, run: run})
		}
		if len(rows) >= share {
			more = true // the key may have more free rows
		}
	}
	return out, more, nil
}

// runRow is one row of a key's run: its id and whether it is free.
type runRow struct {
	id   int64
	free bool
}

// runs reads, for each key, up to n non-waiting pending rows from its head
// on, in id order.
func (s *SQLStore) runs(ctx context.Context, tx tx, cq claimSQL, heads []keyHead, n int) (map[keyPos][]runRow, error) {
	q, args := cq.runs(heads, n)
	rs, err := tx.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := make(map[keyPos][]runRow, len(heads))
	for rs.Next() {
		var p keyPos
		var r runRow
		if err := rs.Scan(&p.topic, &p.key, &r.id, &r.free); err != nil {
			return nil, err
		}
		out[p] = append(out[p], r)
	}
	return out, rs.Err()
}

// segments returns the parts of the key space a claim walks, in key
// order: every topic at once (nil), or, with a topic filter, each matching
// topic that has keyed rows, so that the walk never reads another topic's
// keys.
func (s *SQLStore) segments(ctx context.Context, tx tx, topics relaystore.TopicFilter) ([]*string, error) {
	if topics.All() {
		return []*string{nil}, nil
	}
	names, err := queryColumn[string](ctx, tx, s.q.keyedTopics())
	var out []*string
	for _, name := range names {
		if topics.Match(name) {
			out = append(out, &name)
		}
	}
	return out, err
}

// round calls visit on the key space from just after cursor (the
// store's, as the claim found it) to its end, then (again set) from its
// start round to the cursor, until
// visit reports that it is done. The key space is in the database's order,
// which under a linguistic collation is not Go's: visit knows it has come
// round when it meets a key (or row) it saw before.
func (s *SQLStore) round(ctx context.Context, tx tx, topics relaystore.TopicFilter, cursor keyPos, visit func(seg *string, after keyPos, again bool) (bool, error)) error {
	segs, err := s.segments(ctx, tx, topics)
	if err != nil || len(segs) == 0 {
		return err
	}
	at := -1 // the segment the cursor is in
	for i, seg := range segs {
		if seg == nil || *seg == cursor.topic {
			at = i
			break
		}
	}
	if at < 0 { // its topic has nothing left: start afresh
		at, cursor = 0, keyPos{}
	}
	from := func(i int) keyPos {
		if segs[i] == nil {
			return keyPos{}
		}
		return keyPos{topic: *segs[i]}
	}
	for i := at; i < len(segs); i++ {
		after := from(i)
		if i == at && cursor != (keyPos{}) {
			after = cursor
		}
		if done, err := visit(segs[i], after, false); err != nil || done {
			return err
		}
	}
	if cursor == (keyPos{}) {
		return nil
	}
	for i := 0; i <= at; i++ {
		if done, err := visit(segs[i], from(i), true); err != nil || done {
			return err
		}
	}
	return nil
}

// walkKeys visits up to budget keys with non-waiting pending rows, in key
// order, once round from the opening's cursor, and moves the cursor to the
// last key visited. more reports that it stopped at the budget. Its first
// visit over every topic is the opening's.
func (s *SQLStore) walkKeys(ctx context.Context, tx tx, req relaystore.ClaimRequest, budget int, open claimOpening) ([]keyHead, bool, error) {
	var heads []keyHead
	seen := make(map[keyPos]bool)
	cq := s.claimQ(req)
	first := open.visit
	err := s.round(ctx, tx, req.Topics, open.cursor, func(seg *string, after keyPos, again bool) (bool, error) {
		st := first
		first = stmt{}
		if st.id == adHoc {
			st.q, st.args = cq.walk(seg, after, budget-len(heads), req.StrictOrder)
		}
		rs, err := queryStmt(ctx, tx, st)
		if err != nil {
			return false, err
		}
		defer rs.Close()
		for rs.Next() {
			var h keyHead
			if err := rs.Scan(&h.topic, &h.key, &h.id, &h.free, &h.wait, &h.dead); err != nil {
				return false, err
			}
			if seen[h.keyPos] {
				return true, nil // round
			}
			seen[h.keyPos] = true
			heads = append(heads, h)
		}
		return len(heads) >= budget, rs.Err()
	})
	if err != nil {
		return nil, false, err
	}
	if len(heads) > 0 {
		s.cursor.set(heads[len(heads)-1].keyPos)
	}
	return heads, len(heads) >= budget, nil
}

// keyedRows reads, for an unordered claim, up to req.Limit free keyed rows
// in key order, once round from the opening's cursor, and moves the cursor
// to the key of the last. Its first visit over every topic is the
// opening's.
func (s *SQLStore) keyedRows(ctx context.Context, tx tx, req relaystore.ClaimRequest, open claimOpening) ([]candidate, bool, error) {
	var out []candidate
	var last keyPos
	seen := make(map[int64]bool)
	cq := s.claimQ(req)
	first := open.visit
	err := s.round(ctx, tx, req.Topics, open.cursor, func(seg *string, after keyPos, again bool) (bool, error) {
		st := first
		first = stmt{}
		if st.id == adHoc {
			st.q, st.args = cq.keyedRows(seg, after, req.Limit-len(out))
		}
		rs, err := queryStmt(ctx, tx, st)
		if err != nil {
			return false, err
		}
		defer rs.Close()
		for rs.Next() {
			var id int64
			var pos keyPos
			if err := rs.Scan(&id, &pos.topic, &pos.key); err != nil {
				return false, err
			}
			if seen[id] {
				return true, nil // round
			}
			seen[id] = true
			out, last = append(out, candidate{id: id}), pos
		}
		return len(out) >= req.Limit, rs.Err()
	})
	if err != nil {
		return nil, false, err
	}
	if len(out) > 0 {
		s.cursor.set(last)
	}
	return out, len(out) >= req.Limit, nil
}

// claimQ is the statement builder of one claim, naming its relay.
func (s *SQLStore) claimQ(req relaystore.ClaimRequest) claimSQL {
	q := s.q
	q.relay = req.Relay
	return q
}

// take locks the candidates that are still free (skipping rows locked by
// others), claims them, and returns them, and how many it took over from
// each relay declared dead (Claimed.TakenOver). In an ordered claim, a run
// that lost a row keeps only the rows before it: the rest are not claimed.
// A taken row that cannot be decoded is made dead with the reason instead
// of being returned (bury).
func (s *SQLStore) take(ctx context.Context, tx tx, token string, req relaystore.ClaimRequest, cands []candidate, taking *[]int64) ([]relaystore.Row, map[string]int, error) {
	from := make(map[int64]string) // row → the dead relay it was taken from
	var bad map[int64]string
	collect := func(into *[]relaystore.Row) func(relaystore.Row, sql.NullString, error) {
		add := collectRows(into, &bad)
		return func(r relaystore.Row, takenFrom sql.NullString, why error) {
			add(r, takenFrom, why)
			if takenFrom.String != "" {
				from[r.ID] = takenFrom.String
			}
		}
	}
	// finish buries the undecodable rows of kept and counts what the rest
	// took over from dead relays.
	finish := func(kept []relaystore.Row) ([]relaystore.Row, map[string]int, error) {
		kept, err := s.bury(ctx, tx, token, kept, bad)
		if err != nil {
			return nil, nil, err
		}
		var out map[string]int
		for _, r := range kept {
			if relay, ok := from[r.ID]; ok {
				if out == nil {
					out = make(map[string]int)
				}
				out[relay]++
			}
		}
		return kept, out, nil
	}
	ids := make([]int64, len(cands))
	for i, c := range cands {
		ids[i] = c.id
	}
	cq := s.claimQ(req)
	q, args, inOne := cq.claimFree(token, req.Lease, ids)
	if !inOne {
		// Lock by primary key in id order (see lockFree), then claim what
		// the cut keeps.
		q, args := cq.lockFree(ids)
		locked := make([]relaystore.Row, 0, len(cands))
		err := s.scanRows(ctx, tx, q, args, withReclaimed, collect(&locked))
		if err != nil {
			return nil, nil, err
		}
		kept, _ := cut(cands, locked)
		if len(kept) == 0 {
			return nil, nil, nil
		}
		q, args = cq.claimIDs(token, req.Lease, rowIDs(kept))
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return nil, nil, err
		}
		return finish(kept)
	}
	taken := make([]relaystore.Row, 0, len(cands))
	var err error
	if p, ok := tx.(*pipeTx); ok {
		// The take and COMMIT in one round trip; rows the cut drops are
		// given back after it, and should that fail, the claim's rows
		// are (see Claim): the take may have committed.
		*taking = ids
		// Its plan is cached directly and behind a pooler alike (pooled.go).
		items := []pipeItem{{stmt: stmt{q: genericPlan}, exec: true}, {stmt: stmt{q: q, args: args}, read: func(rs rows) error {
			return s.readRows(rs, withReclaimed, collect(&taken))
		}}}
		_, err = p.send(ctx, items, true)
		if err == nil && s.takeHook != nil {
			err = s.takeHook()
		}
	} else {
		err = s.scanRows(ctx, tx, q, args, withReclaimed, collect(&taken))
	}
	if err != nil {
		return nil, nil, err
	}
	kept, dropped := cut(cands, taken)
	if len(dropped) > 0 {
		q, args := s.q.unclaim(token, dropped)
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return nil, nil, fmt.Errorf("give back rows the cut dropped: %w", err)
		}
	}
	return finish(kept)
}

// genericPlan, sent in the take's round trip, makes the take run on its
// cached generic plan. Its array of ids makes the generic plan's estimated
// cost look higher than a plan for the ids at hand, so PostgreSQL planned
// it anew on every claim: 0.35-0.5 ms of the 0.6 ms an idle claim of one
// row cost the database. Its generic plan is the same primary-key lookup.
// (Generic plans for the walk and the runs were tried too and not kept:
// two stuck-key runs of four had claims p50 65-80 ms instead of 40.)
const genericPlan = `SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`

// bury makes the rows of kept that bad names dead, with the reason as their
// last error, and returns the others: a row the relay cannot read is the
// row's failure, never the claim's, and retrying it would fail the same
// way.
func (s *SQLStore) bury(ctx context.Context, tx tx, token string, kept []relaystore.Row, bad map[int64]string) ([]relaystore.Row, error) {
	if len(bad) == 0 {
		return kept, nil
	}
	out := kept[:0:0]
	for _, r := range kept {
		why, ok := bad[r.ID]
		if !ok {
			out = append(out, r)
			continue
		}
		q, args := s.markDead(token, r.ID, why)
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return nil, fmt.Errorf("mark undecodable row %d dead: %w", r.ID, err)
		}
		s.logger.Error("Outbox row cannot be decoded; marked dead", errors.New(why), watermill.LogFields{"outbox_id": r.ID})
	}
	return out, nil
}

// giveBack releases, after a claim failed, the rows it may have taken: on
// the pipelined path the take commits with the statement that takes, so a
// failure after it (a lost connection, a failed write that follows) would
// leave them leased under a token nobody holds until ClaimTimeout. It runs
// on another connection, after the claim's own ended; rows the claim never
// took do not hold its token and are not touched.
func (s *SQLStore) giveBack(ctx context.Context, token string, ids []int64) {
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	q, args := s.q.unclaim(token, ids)
	if _, err := s.db.exec(ctx, q, args...); err != nil {
		s.logger.Error("Outbox claim failed and giving its rows back failed too; they return when their lease expires", err,
			watermill.LogFields{"rows": len(ids)})
	}
}

// cleanupTimeout bounds the statements that tidy up after a claim failed
// (a pipelined claim's ROLLBACK, giveBack): they outlive the claim's
// context, but a server that never answers costs a connection, not the
// relay's claim worker.
const cleanupTimeout = 5 * time.Second

// cleanupContext is ctx without its cancellation, bounded by
// cleanupTimeout.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// cut keeps per-key order when a claim lost candidates between reading
// and locking them: in each run, the rows behind the first lost one are
// dropped, since they may not go before it. It returns the rows to keep and
// the ids of the taken rows to give back.
func cut(cands []candidate, taken []relaystore.Row) (kept []relaystore.Row, dropped []int64) {
	if len(taken) == len(cands) {
		return taken, nil // taken are candidates: none was lost, no run broke
	}
	got := make(map[int64]int, len(taken)) // id → index in taken
	for i, r := range taken {
		got[r.ID] = i
	}
	kept = make([]relaystore.Row, 0, len(taken))
	var broken map[string]bool
	for _, c := range cands { // id order, so each run in order
		i, ok := got[c.id]
		switch {
		case c.run != "" && broken[c.run]:
			if ok {
				dropped = append(dropped, c.id)
			}
		case ok:
			kept = append(kept, taken[i])
		case c.run != "":
			if broken == nil {
				broken = make(map[string]bool)
			}
			broken[c.run] = true
		}
	}
	return kept, dropped
}

func rowIDs(rows []relaystore.Row) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}
