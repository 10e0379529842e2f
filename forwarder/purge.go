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

// purgeLoop deletes published rows older than PublishedRetention, in small
// batches, until Close. With zero retention rows are deleted when acked and
// there is nothing to purge.
func (s *Subscriber) purgeLoop() {
	defer s.subsWg.Done()
	t := time.NewTicker(s.purgeEvery())
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		for {
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
