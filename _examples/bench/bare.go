package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/e0a82c8c/watermill-outbox/watermilloutbox/relaystore"
)

// bare measures the claim path's ceiling: Store.Claim (limit 1,000) and
// Store.MarkPublished (deleting the rows, as a relay with no retention
// does) in a loop, no broker, over the N unkeyed rows relay drains; and
// our relay to the broker over the same rows in the same run.
func (r *runner) bare() (result, error) {
	ctx := context.Background()
	cfg := r.ourConfig()
	relayTime, _, err := r.drain(newOurSide(r.db, runID(), cfg), 0, r.b.ourPublisher)
	if err != nil {
		return result{}, err
	}

	s := newOurSide(r.db, runID(), cfg)
	if err := s.setup(ctx); err != nil {
		return result{}, err
	}
	defer s.cleanup()
	if err := seed(ctx, r.db, s, "bench_bare_"+runID(), makeMessages(r.o.n, r.o.payload, 0)); err != nil {
		return result{}, err
	}
	req := relaystore.ClaimRequest{Limit: 1000, Lease: cfg.ClaimTimeout, Ordered: !cfg.DisableOrdering}
	var claims []time.Duration
	done, empty := 0, 0
	start := time.Now()
	deadline := start.Add(r.o.timeout)
	for done < r.o.n {
		t := time.Now()
		cl, err := s.store.Claim(ctx, req)
		if err != nil {
			return result{}, fmt.Errorf("claim: %w", err)
		}
		claims = append(claims, time.Since(t))
		if len(cl.Rows) == 0 {
			if empty++; time.Now().After(deadline) {
				return result{}, fmt.Errorf("bare: %d of %d rows claimed within %s", done, r.o.n, r.o.timeout)
			}
			continue
		}
		ids := make([]int64, len(cl.Rows))
		for i, row := range cl.Rows {
			ids[i] = row.ID
		}
		n, err := s.store.MarkPublished(ctx, cl.Token, ids, false)
		if err != nil {
			return result{}, fmt.Errorf("mark published: %w", err)
		}
		if n != len(ids) {
			return result{}, fmt.Errorf("mark published: %d of %d rows", n, len(ids))
		}
		done += n
	}
	bareTime := time.Since(start)
	slices.Sort(claims)
	logf("bare: %d rows in %s (%s), %d claims (%d empty), median %s, max %s",
		r.o.n, bareTime.Round(time.Millisecond), rate(r.o.n, bareTime), len(claims), empty, roundDur(claims[len(claims)/2]), roundDur(claims[len(claims)-1]))
	return result{fields: []string{
		"relay=" + rate(r.o.n, relayTime), "bare=" + rate(r.o.n, bareTime),
		"bare_claim_p50=" + roundDur(claims[len(claims)/2]).String(), "bare_claims=" + fmt.Sprint(len(claims)),
		fmt.Sprintf("relay_vs_bare=%.2f", bareTime.Seconds()/relayTime.Seconds()),
	}}, nil
}
