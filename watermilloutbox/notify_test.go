package watermilloutbox_test

import (
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/config"
	outbox "github.com/e0a82c8c/watermill-outbox/watermilloutbox"
)

type recordingNotifier struct {
	mu  sync.Mutex
	got []bool
}

func (r *recordingNotifier) Notify(committed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, committed)
}

// TestPublisherTellsNotifier: a Notifier hears of every Publish that wrote
// rows, and whether they are committed yet.
func TestPublisherTellsNotifier(t *testing.T) {
	t.Parallel()
	n := &recordingNotifier{}
	db, pub, _ := pgOutboxWith(t, config.Config{DisableNotify: true}, outbox.PublisherConfig{Notifier: n, AutoCommit: true})
	tx := begin(t, db)
	require.NoError(t, pub.WithTx(tx).Publish("t", message.NewMessage(watermill.NewUUID(), []byte("x"))))
	require.NoError(t, tx.Commit())
	require.NoError(t, pub.Publish("t", message.NewMessage(watermill.NewUUID(), []byte("y"))))
	require.NoError(t, pub.Publish("t")) // nothing written: nobody told
	require.Error(t, pub.Publish("", message.NewMessage(watermill.NewUUID(), nil)))
	require.Equal(t, []bool{false, true}, n.got)
}
