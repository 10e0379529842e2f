package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/e0a82c8c/watermill-outbox/inbox"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

// inboxScenario measures what the inbox costs a consumer: the same handler
// (one business INSERT under the delivery's transaction) behind the inbox
// middleware, and behind a middleware that runs it in a plain transaction
// of its own, side by side, in -rounds interleaved rounds of N messages
// each over -workers handlers (one topic each, as partitions). The
// messages come from an in-process gochannel, so what differs is the
// database's work alone; a broker's per-message cost would add to both
// sides and bring the ratio closer to 1. Figures: median rates over the
// rounds, the median of the rounds' ratios (inbox/plain) and their range,
// and the median of each round's p50 per-message latency (the
// middleware's span: begin to commit). With -driver pgx the same pair runs
// over a pgx pool too (inbox.NewPgx against a plain pgx transaction) in
// the same rounds.
func (r *runner) inboxScenario() (result, error) {
	ctx := context.Background()
	id := runID()
	effects, table := "bench_inbox_effects_"+id, "bench_inbox_"+id
	if _, err := r.db.ExecContext(ctx, `CREATE TABLE `+effects+` (message_uuid TEXT NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		return result{}, err
	}
	defer r.db.Exec(`DROP TABLE IF EXISTS ` + effects) //nolint:errcheck // best effort
	in, err := inbox.New(r.db, inbox.Config{Consumer: "bench", Table: table, Dialect: outbox.PostgreSQL}, nil)
	if err != nil {
		return result{}, err
	}
	if err := in.Migrate(ctx); err != nil {
		return result{}, err
	}
	defer r.db.Exec(`DROP TABLE IF EXISTS ` + table) //nolint:errcheck // best effort

	insert := `INSERT INTO ` + effects + ` (message_uuid, amount) VALUES ($1, $2)`
	handler := func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		if tx, ok := outbox.PgxTxFromContext(ctx); ok {
			_, err := tx.Exec(ctx, insert, msg.UUID, len(msg.Payload))
			return nil, err
		}
		tx, _ := outbox.TxFromContext(ctx)
		_, err := tx.ExecContext(ctx, insert, msg.UUID, len(msg.Payload))
		return nil, err
	}
	plain := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			tx, err := r.db.BeginTx(ctx, nil)
			if err != nil {
				return nil, err
			}
			defer tx.Rollback() //nolint:errcheck // no-op after Commit
			msg.SetContext(outbox.ContextWithTx(ctx, tx))
			defer msg.SetContext(ctx)
			if _, err := h(msg); err != nil {
				return nil, err
			}
			return nil, tx.Commit()
		}
	}
	type side struct {
		name string
		mw   message.HandlerMiddleware
	}
	sides := []side{{"plain", plain}, {"inbox", in.Middleware}}
	pairs := [][2]string{{"plain", "inbox"}}
	if r.o.driver == "pgx" {
		pool, err := r.pgxPool()
		if err != nil {
			return result{}, err
		}
		inPgx, err := inbox.NewPgx(pool, inbox.Config{Consumer: "bench", Table: table}, nil)
		if err != nil {
			return result{}, err
		}
		plainPgx := func(h message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				ctx := msg.Context()
				tx, err := pool.Begin(ctx)
				if err != nil {
					return nil, err
				}
				defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
				msg.SetContext(outbox.ContextWithPgxTx(ctx, tx))
				defer msg.SetContext(ctx)
				if _, err := h(msg); err != nil {
					return nil, err
				}
				return nil, tx.Commit(ctx)
			}
		}
		sides = append(sides, side{"plain-pgx", plainPgx}, side{"inbox-pgx", inPgx.Middleware})
		pairs = append(pairs, [2]string{"plain-pgx", "inbox-pgx"})
	}

	rates := map[string][]float64{}
	p50s := map[string][]time.Duration{}
	for round := range r.o.rounds {
		for i := range sides {
			s := sides[(i+round)%len(sides)] // alternate who goes first
			rate, p50, err := r.consumeRound(s.mw, handler)
			if err != nil {
				return result{}, fmt.Errorf("%s: %w", s.name, err)
			}
			rates[s.name] = append(rates[s.name], rate)
			p50s[s.name] = append(p50s[s.name], p50)
		}
		line := fmt.Sprintf("inbox round %d:", round+1)
		for _, s := range sides {
			line += fmt.Sprintf(" %s %.0f/s p50 %s", s.name, rates[s.name][round], p50s[s.name][round].Round(time.Microsecond))
		}
		logf("%s", line)
	}
	median := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	medianD := func(v []time.Duration) time.Duration { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	ms := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + "ms"
	}
	// A ratio is the median of each round's, whose sides ran back to back:
	// a machine whose load drifts moves both.
	fields := []string{fmt.Sprintf("workers=%d rounds=%d", r.o.workers, r.o.rounds)}
	for _, p := range pairs {
		var ratios []float64
		for i := range rates[p[0]] {
			ratios = append(ratios, rates[p[1]][i]/rates[p[0]][i])
		}
		slices.Sort(ratios)
		name := "ratio" + strings.ReplaceAll(strings.TrimPrefix(p[0], "plain"), "-", "_")
		fields = append(fields,
			fmt.Sprintf("%s=%.0f/s %s=%.0f/s %s=%.2f %s_range=%.2f-%.2f", p[0], median(rates[p[0]]), p[1], median(rates[p[1]]),
				name, median(ratios), name, ratios[0], ratios[len(ratios)-1]),
			fmt.Sprintf("p50_%s=%s p50_%s=%s", p[0], ms(medianD(p50s[p[0]])), p[1], ms(medianD(p50s[p[1]]))))
	}
	return result{fields: fields}, nil
}

// consumeRound runs N fresh messages through a router whose -workers
// handlers are wrapped in mw, and returns the rate and the p50 of mw's
// per-message time.
func (r *runner) consumeRound(mw message.HandlerMiddleware, h message.HandlerFunc) (float64, time.Duration, error) {
	logger := watermill.NopLogger{}
	// Publish returns once the handler acked: one message at a time per
	// topic, as a partition's consumer takes them.
	broker := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	defer broker.Close()
	workers := max(r.o.workers, 1)
	var mu sync.Mutex
	times := make([]time.Duration, 0, r.o.n)
	done := make(chan struct{})
	timed := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			start := time.Now()
			out, err := h(msg)
			if err != nil {
				return out, err
			}
			mu.Lock()
			times = append(times, time.Since(start))
			if len(times) == r.o.n {
				close(done)
			}
			mu.Unlock()
			return out, nil
		}
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return 0, 0, err
	}
	for w := range workers {
		wrapped := timed(mw(h))
		router.AddConsumerHandler("h"+strconv.Itoa(w), "in-"+strconv.Itoa(w), broker, func(msg *message.Message) error {
			_, err := wrapped(msg)
			return err
		})
	}
	stop, err := runRouter(router.Run, router.Running(), router.Close)
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	start := time.Now()
	publishErr := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < r.o.n; i += workers {
				msg := message.NewMessage(newID(), make([]byte, r.o.payload))
				if err := broker.Publish("in-"+strconv.Itoa(w), msg); err != nil {
					publishErr <- err
					return
				}
			}
		}()
	}
	select {
	case <-done:
	case err := <-publishErr:
		return 0, 0, err
	case <-time.After(r.o.timeout):
		mu.Lock()
		defer mu.Unlock()
		return 0, 0, fmt.Errorf("%d of %d messages handled after %s", len(times), r.o.n, r.o.timeout)
	}
	elapsed := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(times)
	return float64(r.o.n) / elapsed.Seconds(), times[len(times)/2], nil
}
