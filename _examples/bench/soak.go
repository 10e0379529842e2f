package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// soakWindow is what one window of the soak measured.
type soakWindow struct {
	from, to           time.Time
	committed, missing int
	p50, p99           time.Duration
	table, indexes     int64 // bytes, at the window's end
	dead               int64 // n_dead_tup at the window's end
	claims             claimStats
}

func (w soakWindow) String() string {
	return fmt.Sprintf("committed=%d rate=%.0f/s p50=%s p99=%s missing=%d table=%.1fMB indexes=%.1fMB dead_tuples=%d claims=%d claimed_rows=%d claim_p50=%s claim_max=%s",
		w.committed, float64(w.committed)/w.to.Sub(w.from).Seconds(), roundDur(w.p50), roundDur(w.p99), w.missing, mb(w.table), mb(w.indexes), w.dead,
		w.claims.n, w.claims.rows, roundDur(w.claims.p50), roundDur(w.claims.max))
}

// soak publishes r.o.rate events a second, r.o.batch per transaction on
// r.o.workers connections, over r.o.keys keys with ordering on, for
// r.o.duration while our relay runs, and reports per r.o.window the
// commit→received latency and the state of our table.
func (r *runner) soak() (result, error) {
	ctx := context.Background()
	id := runID()
	s := newOurSide(r.db, id, r.ourConfig())
	if err := s.setup(ctx); err != nil {
		return result{}, err
	}
	defer s.cleanup()
	topic := "bench_soak_" + id
	drop, err := r.b.prepare(topic)
	if err != nil {
		return result{}, err
	}
	defer drop()

	if r.o.window <= 0 || r.o.window > r.o.duration {
		r.o.window = r.o.duration
	}
	batch := max(r.o.batch, 1)
	total := int(r.o.duration.Seconds()*float64(r.o.rate)) + batch
	commits := make([]atomic.Int64, total)  // UnixNano of each event's commit
	arrivals := make([]atomic.Int64, total) // UnixNano of its first arrival
	var dups, reorder atomic.Int64
	var lastMu sync.Mutex
	lastSeq := make(map[string]int)
	c, err := r.b.consumeFunc(topic, func(d delivery) {
		if d.seq < 0 || d.seq >= total || !arrivals[d.seq].CompareAndSwap(0, d.at.UnixNano()) {
			dups.Add(1)
			return
		}
		lastMu.Lock()
		if last, ok := lastSeq[d.key]; ok && d.seq < last {
			reorder.Add(1)
		}
		lastSeq[d.key] = d.seq
		lastMu.Unlock()
	})
	if err != nil {
		return result{}, err
	}
	defer c.stop()
	pub, err := r.b.ourPublisher()
	if err != nil {
		return result{}, err
	}
	defer pub.Close()
	timer := &claimTimer{}
	timer.on.Store(true)
	s.wrapStore = func(st relaystore.Store) relaystore.Store { timer.Store = st; return timer }
	stop, err := s.startRelay(pub)
	if err != nil {
		return result{}, err
	}
	defer stop()
	logf("soak: %d events/s, %d per transaction on %d connections, %d keys, ordering on, for %s; one line per %s",
		r.o.rate, batch, r.o.workers, r.o.keys, r.o.duration, r.o.window)

	// Writers: each takes the first seq of a batch and commits it.
	jobs := make(chan int, 4*r.o.workers)
	var committed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, r.o.workers)
	for range r.o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := range jobs {
				msgs := make([]*message.Message, 0, batch)
				for i := lo; i < min(lo+batch, total); i++ {
					msgs = append(msgs, newMessage(i, r.o.payload, keyOf(i, r.o.keys)))
				}
				if err := commitEvents(ctx, s, topic, msgs); err != nil {
					errs <- err
					for range jobs { // let the pacer finish
					}
					return
				}
				now := time.Now().UnixNano()
				for i := lo; i < lo+len(msgs); i++ {
					commits[i].Store(now)
				}
				committed.Add(int64(len(msgs)))
			}
		}()
	}

	// Windows: sizes sampled at each window's end, latencies a grace later
	// (events committed just before the end need a moment to arrive).
	start := time.Now()
	end := start.Add(r.o.duration)
	var bounds []time.Time
	for t := start; t.Before(end); t = t.Add(r.o.window) {
		bounds = append(bounds, t)
	}
	bounds = append(bounds, end)
	windows := make([]soakWindow, len(bounds)-1)
	grace := min(10*time.Second, r.o.window/2)
	var winWg sync.WaitGroup
	winWg.Add(1)
	go func() {
		defer winWg.Done()
		for i := range windows {
			time.Sleep(time.Until(bounds[i+1]))
			w := &windows[i]
			w.from, w.to = bounds[i], bounds[i+1]
			w.claims = timer.take()
			if err := r.tableStats(ctx, s.table, w); err != nil {
				logf("soak: table statistics: %v", err)
			}
			if err := r.b.trim(topic, c); err != nil {
				logf("soak: trim the topic: %v", err)
			}
			time.Sleep(grace)
			w.latencies(commits, arrivals)
			fmt.Printf("soak window=%d/%d %s\n", i+1, len(windows), w)
		}
	}()

	// The pacer.
	period := time.Duration(float64(time.Second) * float64(batch) / float64(r.o.rate))
	for b := 0; ; b++ {
		at := start.Add(time.Duration(b) * period)
		if !at.Before(end) || b*batch >= total {
			break
		}
		time.Sleep(time.Until(at))
		select {
		case jobs <- b * batch:
		case err := <-errs:
			close(jobs)
			wg.Wait()
			return result{}, err
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return result{}, err
	default:
	}
	winWg.Wait()
	n := int(committed.Load())

	// Everything committed must arrive.
	deadline := time.Now().Add(r.o.timeout)
	for {
		missing := 0
		for i := range total {
			if commits[i].Load() != 0 && arrivals[i].Load() == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("soak: %d of %d committed events did not arrive within %s", missing, n, r.o.timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range windows {
		windows[i].latencies(commits, arrivals)
	}
	first, last := windows[0], windows[len(windows)-1]
	logf("soak: %d events committed in %s, all received; %d duplicates, %d reordered", n, r.o.duration, dups.Load(), reorder.Load())
	return result{n: n, fields: []string{
		"rate=" + strconv.Itoa(r.o.rate) + "/s", "batch=" + strconv.Itoa(batch), "keys=" + strconv.Itoa(r.o.keys),
		"duration=" + r.o.duration.String(), "window=" + r.o.window.String(), "windows=" + strconv.Itoa(len(windows)),
		"first_p50=" + roundDur(first.p50).String(), "last_p50=" + roundDur(last.p50).String(),
		"first_p99=" + roundDur(first.p99).String(), "last_p99=" + roundDur(last.p99).String(),
		fmt.Sprintf("first_table=%.1fMB", mb(first.table)), fmt.Sprintf("last_table=%.1fMB", mb(last.table)),
		fmt.Sprintf("first_indexes=%.1fMB", mb(first.indexes)), fmt.Sprintf("last_indexes=%.1fMB", mb(last.indexes)),
		fmt.Sprintf("first_dead=%d", first.dead), fmt.Sprintf("last_dead=%d", last.dead),
		"reordered=" + strconv.FormatInt(reorder.Load(), 10),
		fmt.Sprintf("p99_ratio=%.2f", last.p99.Seconds()/max(first.p99.Seconds(), 1e-9)),
	}}, nil
}

// commitEvents writes msgs in one transaction of their own.
func commitEvents(ctx context.Context, s *ourSide, topic string, msgs []*message.Message) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := s.publish(tx, topic, msgs...); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// latencies fills in w's commit→received figures from the events
// committed within it.
func (w *soakWindow) latencies(commits, arrivals []atomic.Int64) {
	from, to := w.from.UnixNano(), w.to.UnixNano()
	var lat []time.Duration
	w.committed, w.missing = 0, 0
	for i := range commits {
		c := commits[i].Load()
		if c < from || c >= to {
			continue
		}
		w.committed++
		a := arrivals[i].Load()
		if a == 0 {
			w.missing++
			continue
		}
		lat = append(lat, time.Duration(max(a-c, 0)))
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		w.p50, w.p99 = pct(lat, 50), pct(lat, 99)
	}
}

// tableStats records our table's size, its indexes' size and its dead
// tuples into w.
func (r *runner) tableStats(ctx context.Context, table string, w *soakWindow) error {
	if err := r.db.QueryRowContext(ctx, `SELECT pg_table_size($1::regclass), pg_indexes_size($1::regclass)`, table).Scan(&w.table, &w.indexes); err != nil {
		return err
	}
	return r.db.QueryRowContext(ctx, `SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&w.dead)
}
