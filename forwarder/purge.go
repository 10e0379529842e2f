package forwarder

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill"
)

// purgeBatch keeps each retention DELETE short: long deletes hold locks
// and bloat the write-ahead log in one go.
const purgeBatch = 1000

// purgeEvery returns how often published rows past their retention are
// deleted: a quarter of the retention, between the polling interval and a
// minute.
func (s *Subscriber) purgeEvery() time.Duration {
	return min(max(s.config.PublishedRetention/4, s.config.PollingInterval), time.Minute)
}

// purgeLoop keeps the table in shape until Close: it deletes published
// rows older than PublishedRetention, in small batches (with zero
// retention rows are deleted when acked and there is nothing to purge),
// and asks the store to maintain its table (Store.Maintain: SQLStore
// vacuums it when autovacuum is off).
func (s *Subscriber) purgeLoop() {
	defer s.subsWg.Done()
	every := time.Minute
	if s.config.PublishedRetention > 0 {
		every = s.purgeEvery()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	// Close ends a maintenance in progress (a vacuum of a bloated table
	// takes seconds).
	loopCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		select {
		case <-s.closing:
			stop()
		case <-loopCtx.Done():
		}
	}()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(loopCtx, 5*time.Minute)
		if err := s.store.Maintain(ctx); err != nil && loopCtx.Err() == nil {
			s.logger.Error("Outbox table maintenance failed, retrying later", err, nil)
		}
		cancel()
		for s.config.PublishedRetention > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			n, err := s.store.PurgePublished(ctx, s.config.PublishedRetention, purgeBatch)
			cancel()
			if err != nil {
				s.logger.Error("Outbox purge of published rows failed, retrying later", err, nil)
				break
			}
			if n > 0 {
				s.logger.Debug("Outbox purged published rows", watermill.LogFields{"rows": n})
			}
			if n < purgeBatch {
				break
			}
			select {
			case <-s.closing:
				return
			default:
			}
		}
	}
}
