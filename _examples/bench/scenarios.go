package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
)

// drain seeds n committed events through s, then times its relay until a
// consumer on the broker has all of them.
func (r *runner) drain(s side, keys int, dest func() (message.Publisher, error)) (time.Duration, *consumer, error) {
	ctx := context.Background()
	defer s.cleanup()
	if err := s.setup(ctx); err != nil {
		return 0, nil, fmt.Errorf("%s: setup: %w", s.name(), err)
	}
	topic := "bench_" + s.name() + "_" + runID()
	drop, err := r.b.prepare(topic)
	if err != nil {
		return 0, nil, err
	}
	defer drop()
	if err := seed(ctx, r.db, s, topic, makeMessages(r.o.n, r.o.payload, keys)); err != nil {
		return 0, nil, fmt.Errorf("%s: seed: %w", s.name(), err)
	}
	c, err := r.b.consume(topic, r.o.n)
	if err != nil {
		return 0, nil, err
	}
	defer c.stop()
	pub, err := dest()
	if err != nil {
		return 0, nil, err
	}
	defer pub.Close()
	if err := c.warm(pub, topic); err != nil {
		return 0, nil, err
	}
	start, cpu := time.Now(), cpuSnapshot()
	stop, err := s.startRelay(pub)
	if err != nil {
		return 0, nil, err
	}
	err = c.wait(r.o.timeout)
	elapsed := time.Since(start)
	used := cpuPerEvent(cpu, r.o.n)
	stop()
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", s.name(), err)
	}
	logf("%s: %d events in %s (%s), %d duplicates, %s", s.name(), r.o.n, elapsed.Round(time.Millisecond), rate(r.o.n, elapsed), c.dups, used)
	return elapsed, c, nil
}

func (r *runner) relay() (result, error) {
	var ours, theirs, riv time.Duration
	var err error
	runs := func(name string) bool { return r.o.only == "" || r.o.only == name }
	if runs("outbox") {
		if ours, err = r.drainOurs(); err != nil {
			return result{}, err
		}
	}
	if runs("forwarder") {
		if theirs, _, err = r.drain(newFwdSide(r.db, runID()), 0, r.b.forwarderPublisher); err != nil {
			return result{}, err
		}
	}
	if runs("river") {
		if riv, err = r.drainRiver(); err != nil {
			return result{}, err
		}
	}
	res := result{outbox: rate(r.o.n, ours), forwarder: rate(r.o.n, theirs), extra: []string{"river=" + rate(r.o.n, riv)}}
	if r.o.only == "" {
		res.ratio = theirs.Seconds() / ours.Seconds()
		res.extra = append(res.extra, fmt.Sprintf("ratio_river=%.2f", riv.Seconds()/ours.Seconds()))
		if r.o.pairs > 0 {
			pairs, err := r.riverPairs(riv.Seconds() / ours.Seconds())
			if err != nil {
				return result{}, err
			}
			res.extra = append(res.extra, pairs...)
		}
	}
	if runs("outbox") && r.o.driver == "pgx" {
		s, err := r.pgxSide()
		if err != nil {
			return result{}, err
		}
		d, _, err := r.drain(s, 0, r.b.ourPublisher)
		if err != nil {
			return result{}, err
		}
		res.extra = append(res.extra, "outbox_pgx="+rate(r.o.n, d), fmt.Sprintf("pgx_vs_sql=%.2f", ours.Seconds()/d.Seconds()))
	}
	if runs("outbox") && r.o.metrics {
		s := newOurSide(r.db, runID(), r.ourConfig())
		s.instrument, s.label = true, "outbox_metrics"
		d, _, err := r.drain(s, 0, r.b.ourPublisher)
		if err != nil {
			return result{}, err
		}
		res.extra = append(res.extra, "outbox_metrics="+rate(r.o.n, d), fmt.Sprintf("metrics_vs_plain=%.2f", ours.Seconds()/d.Seconds()))
	}
	return res, nil
}

// riverPairs drains N events with our side and with River in -pairs more
// rounds, the two in turn (River first in every other round), and returns
// the median of every round's ratio (first the one of the main run) with
// their range: on a shared machine the load moves between two drains more
// than the sides differ, and pairs taken back to back see the same load.
func (r *runner) riverPairs(first float64) ([]string, error) {
	ratios := []float64{first}
	for i := range r.o.pairs {
		var ours, riv time.Duration
		var err error
		if i%2 == 0 { // River first
			if riv, err = r.drainRiver(); err == nil {
				ours, err = r.drainOurs()
			}
		} else if ours, err = r.drainOurs(); err == nil {
			riv, err = r.drainRiver()
		}
		if err != nil {
			return nil, err
		}
		ratios = append(ratios, riv.Seconds()/ours.Seconds())
	}
	slices.Sort(ratios)
	return []string{fmt.Sprintf("ratio_river_median=%.2f", ratios[len(ratios)/2]),
		fmt.Sprintf("ratio_river_range=%.2f-%.2f", ratios[0], ratios[len(ratios)-1]), fmt.Sprintf("pairs=%d", len(ratios))}, nil
}

// drainOurs drains N events with our side, as configured.
func (r *runner) drainOurs() (time.Duration, error) {
	d, _, err := r.drain(newOurSide(r.db, runID(), r.ourConfig()), 0, r.b.ourPublisher)
	return d, err
}

// drainRiver drains N events with River.
func (r *runner) drainRiver() (time.Duration, error) {
	rs, err := newRiverSide(r)
	if err != nil {
		return 0, err
	}
	d, _, err := r.drain(rs, 0, r.b.ourPublisher)
	return d, err
}

// pgxSide is our side with its store over the run's pgx pool.
func (r *runner) pgxSide() (*ourSide, error) {
	pool, err := r.pgxPool()
	if err != nil {
		return nil, err
	}
	s := newOurSide(r.db, runID(), r.ourConfig())
	s.pool, s.label = pool, "outbox_pgx"
	return s, nil
}

func (r *runner) ordered() (result, error) {
	cfg := r.ourConfig()
	ordered, oc, err := r.drain(newOurSide(r.db, runID(), cfg), r.o.keys, r.b.ourPublisher)
	if err != nil {
		return result{}, err
	}
	cfg.DisableOrdering = true
	unordered, _, err := r.drain(newOurSide(r.db, runID(), cfg), r.o.keys, r.b.ourPublisher)
	if err != nil {
		return result{}, err
	}
	theirs, _, err := r.drain(newFwdSide(r.db, runID()), r.o.keys, r.b.forwarderPublisher)
	if err != nil {
		return result{}, err
	}
	return result{
		outbox: rate(r.o.n, ordered), forwarder: rate(r.o.n, theirs),
		extra: []string{"unordered=" + rate(r.o.n, unordered), "keys=" + strconv.Itoa(r.o.keys), "reordered=" + strconv.Itoa(oc.reorder)},
		ratio: unordered.Seconds() / ordered.Seconds(),
	}, nil
}

// latencies runs s's relay while committing one event per transaction at
// r.o.rate events/s, and returns each event's commit→received time, sorted.
func (r *runner) latencies(s side, dest func() (message.Publisher, error)) ([]time.Duration, error) {
	return r.latenciesOn(r.db, s, dest)
}

// latenciesOn is latencies with the service's transactions on db.
func (r *runner) latenciesOn(db *sql.DB, s side, dest func() (message.Publisher, error)) ([]time.Duration, error) {
	ctx := context.Background()
	defer s.cleanup()
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	topic := "bench_" + s.name() + "_" + runID()
	drop, err := r.b.prepare(topic)
	if err != nil {
		return nil, err
	}
	defer drop()
	c, err := r.b.consume(topic, r.o.n)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	pub, err := dest()
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	if err := c.warm(pub, topic); err != nil {
		return nil, err
	}
	stop, err := s.startRelay(pub)
	if err != nil {
		return nil, err
	}
	defer stop()

	msgs := makeMessages(r.o.n, r.o.payload, 0)
	committed := make([]time.Time, len(msgs))
	period := time.Second / time.Duration(r.o.rate)
	start := time.Now().Add(200 * time.Millisecond) // let the relay settle
	for i, m := range msgs {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return nil, err
		}
		if err := s.publish(tx, topic, m); err != nil {
			_ = tx.Rollback()
			return nil, err
		}
		if err := tx.Commit(); err != nil {
			return nil, err
		}
		committed[i] = time.Now()
	}
	if err := c.wait(r.o.timeout); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name(), err)
	}
	got := c.arrivals()
	lat := make([]time.Duration, len(msgs))
	for i, m := range msgs {
		lat[i] = max(got[m.UUID].Sub(committed[i]), 0)
	}
	slices.Sort(lat)
	logf("%s: p50 %s p75 %s p90 %s p99 %s max %s", s.name(), pct(lat, 50), pct(lat, 75), pct(lat, 90), pct(lat, 99), lat[len(lat)-1])
	return lat, nil
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(10 * time.Microsecond)
}

func (r *runner) latency() (result, error) {
	ours, err := r.latencies(newOurSide(r.db, runID(), r.ourConfig()), r.b.ourPublisher)
	if err != nil {
		return result{}, err
	}
	// Right after the direct figure, which they are compared with.
	var pb [2][]time.Duration
	if r.o.pgbouncer != "" {
		if pb, err = r.pgbouncerLatencies(); err != nil {
			return result{}, err
		}
	}
	theirs, err := r.latencies(newFwdSide(r.db, runID()), r.b.forwarderPublisher)
	if err != nil {
		return result{}, err
	}
	rs, err := newRiverSide(r)
	if err != nil {
		return result{}, err
	}
	riv, err := r.latencies(rs, r.b.ourPublisher)
	if err != nil {
		return result{}, err
	}
	o50, o99, f50, f99, r50, r99 := pct(ours, 50), pct(ours, 99), pct(theirs, 50), pct(theirs, 99), pct(riv, 50), pct(riv, 99)
	var extra []string
	if r.o.metrics {
		s := newOurSide(r.db, runID(), r.ourConfig())
		s.instrument, s.label = true, "outbox_metrics"
		m, err := r.latencies(s, r.b.ourPublisher)
		if err != nil {
			return result{}, err
		}
		extra = append(extra, "outbox_metrics_p50="+roundDur(pct(m, 50)).String(), "outbox_metrics_p99="+roundDur(pct(m, 99)).String())
	}
	if r.o.pgbouncer != "" {
		b50 := pct(pb[0], 50)
		extra = append(extra,
			"pgbouncer_p50="+roundDur(b50).String(), "pgbouncer_p99="+roundDur(pct(pb[0], 99)).String(),
			"pgbouncer_listen_pooled_p50="+roundDur(pct(pb[1], 50)).String(),
			"pgbouncer_listen_pooled_p99="+roundDur(pct(pb[1], 99)).String(),
			fmt.Sprintf("ratio_pgbouncer=%.2f", b50.Seconds()/max(o50.Seconds(), 1e-9)))
	}
	return result{
		outbox: roundDur(o50).String(), forwarder: roundDur(f50).String(),
		extra: append([]string{
			"river=" + roundDur(r50).String(),
			"outbox_p50=" + roundDur(o50).String(), "outbox_p99=" + roundDur(o99).String(),
			"forwarder_p50=" + roundDur(f50).String(), "forwarder_p99=" + roundDur(f99).String(),
			"river_p50=" + roundDur(r50).String(), "river_p99=" + roundDur(r99).String(),
			fmt.Sprintf("ratio_river=%.2f", r50.Seconds()/max(o50.Seconds(), 1e-9)),
		}, extra...),
		ratio: f50.Seconds() / max(o50.Seconds(), 1e-9),
	}, nil
}

// pgbouncerLatencies runs our side with its store, the service's commits
// and the relay through the PgBouncer at -pgbouncer: first with the relay's
// LISTEN on PostgreSQL directly (ListenURL = -pg), then with its LISTEN
// through the pooler, where it receives nothing and the relay polls.
func (r *runner) pgbouncerLatencies() ([2][]time.Duration, error) {
	var lat [2][]time.Duration
	db, err := openDB("pgx", "PgBouncer", r.o.pgbouncer)
	if err != nil {
		return lat, err
	}
	defer db.Close()
	for i, listen := range []string{r.o.pgDSN, ""} {
		cfg := r.ourConfig()
		cfg.ListenURL = listen
		s := newOurSide(db, runID(), cfg)
		s.label = "outbox_pgbouncer"
		if listen == "" {
			s.label += "_listen_pooled"
		}
		if lat[i], err = r.latenciesOn(db, s, r.b.ourPublisher); err != nil {
			return lat, err
		}
	}
	return lat, nil
}

// writer is one way of writing an event inside a business transaction.
type writer struct {
	name    string
	s       side // nil for the bare INSERT
	table   string
	publish func(tx *sql.Tx, topic string, m *message.Message) error
	// pgx, when set, writes under a pgx transaction instead (-driver pgx).
	pgx func(tx pgx.Tx, topic string, m *message.Message) error
}

// publishRate runs r.o.n business transactions (an order row plus one
// event) on r.o.workers connections, and returns transactions/s.
func (r *runner) publishRate(w writer) (float64, error) {
	ctx := context.Background()
	orders := "bench_orders_" + runID()
	if _, err := r.db.ExecContext(ctx, `CREATE TABLE `+orders+` (id TEXT PRIMARY KEY, total BIGINT NOT NULL)`); err != nil {
		return 0, err
	}
	defer r.db.Exec(`DROP TABLE IF EXISTS ` + orders) //nolint:errcheck // best effort
	msgs := makeMessages(r.o.n, r.o.payload, 0)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, r.o.workers)
	start := time.Now()
	for range r.o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(msgs) {
					return
				}
				if err := r.businessTx(ctx, orders, w, msgs[i], i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("%s: %w", w.name, err)
	}
	tps := float64(r.o.n) / elapsed.Seconds()
	logf("%s: %d transactions in %s (%.0f/s)", w.name, r.o.n, elapsed.Round(time.Millisecond), tps)
	return tps, nil
}

func (r *runner) businessTx(ctx context.Context, orders string, w writer, m *message.Message, i int) error {
	if w.pgx != nil {
		return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+orders+` (id, total) VALUES ($1, $2)`, m.UUID, 1000+i); err != nil {
				return err
			}
			return w.pgx(tx, "orders.placed", m)
		})
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+orders+` (id, total) VALUES ($1, $2)`, m.UUID, 1000+i); err != nil {
		return err
	}
	if err := w.publish(tx, "orders.placed", m); err != nil {
		return err
	}
	return tx.Commit()
}

func (r *runner) publish() (result, error) {
	ctx := context.Background()
	mk := func(name string, s side) (writer, error) {
		if err := s.setup(ctx); err != nil {
			return writer{}, err
		}
		return writer{name: name, s: s, publish: func(tx *sql.Tx, topic string, m *message.Message) error {
			return s.publish(tx, topic, m)
		}}, nil
	}
	// The bare INSERT writes the very row our publisher writes, into an
	// outbox table, with none of the publisher's checks.
	rawSide := newOurSide(r.db, runID(), r.ourConfig())
	raw, err := mk("raw", rawSide)
	if err != nil {
		return result{}, err
	}
	raw.publish = func(tx *sql.Tx, topic string, m *message.Message) error {
		md, _ := json.Marshal(m.Metadata)
		_, err := tx.Exec(`INSERT INTO `+rawSide.table+` (uuid, topic, partition_key, payload, metadata) VALUES ($1, $2, NULL, $3, $4)`,
			m.UUID, topic, []byte(m.Payload), string(md))
		return err
	}
	onCfg := r.ourConfig()
	offCfg := onCfg
	offCfg.DisableNotify = true
	ours, err := mk("outbox", newOurSide(r.db, runID(), onCfg))
	if err != nil {
		return result{}, err
	}
	oursOff, err := mk("outbox_nowake", newOurSide(r.db, runID(), offCfg))
	if err != nil {
		return result{}, err
	}
	theirs, err := mk("forwarder", newFwdSide(r.db, runID()))
	if err != nil {
		return result{}, err
	}
	rs, err := newRiverSide(r)
	if err != nil {
		return result{}, err
	}
	riv, err := mk("river", rs)
	if err != nil {
		return result{}, err
	}
	writers := []writer{raw, ours, oursOff, theirs, riv}
	if r.o.driver == "pgx" {
		ps, err := r.pgxSide()
		if err != nil {
			return result{}, err
		}
		w, err := mk("outbox_pgx", ps)
		if err != nil {
			return result{}, err
		}
		w.pgx = func(tx pgx.Tx, topic string, m *message.Message) error { return ps.publishPgx(tx, topic, m) }
		writers = append(writers, w)
	}
	defer func() {
		for _, w := range writers {
			w.s.cleanup()
		}
	}()
	// Rounds interleave the writers, each round in a rotated order, so a
	// disturbance on the machine (a checkpoint, an fsync stall) hits them
	// alike. Rates are medians over rounds; the _vs_raw figures are medians
	// of each round's own ratio, which cancels drift between rounds.
	all := make(map[string][]float64)
	vsRaw := make(map[string][]float64)
	for round := range r.o.rounds {
		got := make(map[string]float64)
		for i := range writers {
			w := writers[(i+round)%len(writers)]
			tps, err := r.publishRate(w)
			if err != nil {
				return result{}, err
			}
			got[w.name] = tps
			all[w.name] = append(all[w.name], tps)
		}
		for name, tps := range got {
			vsRaw[name] = append(vsRaw[name], tps/got["raw"])
		}
	}
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	rates := make(map[string]float64)
	for name, v := range all {
		rates[name] = median(v)
	}
	f := func(v float64) string { return fmt.Sprintf("%.0f/s", v) }
	return result{
		outbox: f(rates["outbox"]), forwarder: f(rates["forwarder"]),
		extra: []string{
			"river=" + f(rates["river"]),
			"raw=" + f(rates["raw"]), "outbox_nowake=" + f(rates["outbox_nowake"]),
			fmt.Sprintf("outbox_vs_raw=%.2f", median(vsRaw["outbox"])),
			fmt.Sprintf("outbox_nowake_vs_raw=%.2f", median(vsRaw["outbox_nowake"])),
			fmt.Sprintf("forwarder_vs_raw=%.2f", median(vsRaw["forwarder"])),
			fmt.Sprintf("river_vs_raw=%.2f", median(vsRaw["river"])),
			"river_insert=" + riverInsertDriver,
			pgxFigures(rates, vsRaw, median),
			fmt.Sprintf("ratio_river=%.2f", rates["outbox"]/rates["river"]),
		},
		ratio: rates["outbox"] / rates["forwarder"],
	}, nil
}

func (r *runner) memory() (result, error) {
	id := runID()
	ours, err := r.peakRSS(newOurSide(r.db, id, r.ourConfig()), id, r.o.n)
	if err != nil {
		return result{}, err
	}
	id10 := runID()
	ours10, err := r.peakRSS(newOurSide(r.db, id10, r.ourConfig()), id10, r.o.n/10)
	if err != nil {
		return result{}, err
	}
	fid := runID()
	theirs, err := r.peakRSS(newFwdSide(r.db, fid), fid, r.o.n)
	if err != nil {
		return result{}, err
	}
	f := func(v int64) string { return fmt.Sprintf("%.1fMB", mb(v)) }
	return result{
		outbox: f(ours), forwarder: f(theirs),
		extra: []string{fmt.Sprintf("outbox_n%d=%s", r.o.n/10, f(ours10))},
		ratio: float64(ours) / float64(theirs),
	}, nil
}

// pgxFigures prints the pgx writer's figures when it ran (-driver pgx).
func pgxFigures(rates map[string]float64, vsRaw map[string][]float64, median func([]float64) float64) string {
	if _, ok := rates["outbox_pgx"]; !ok {
		return "driver=database/sql"
	}
	return fmt.Sprintf("outbox_pgx=%.0f/s outbox_pgx_vs_raw=%.2f pgx_vs_sql=%.2f", rates["outbox_pgx"], median(vsRaw["outbox_pgx"]), rates["outbox_pgx"]/rates["outbox"])
}
