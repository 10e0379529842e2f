package forwarder_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/require"

	"github.com/e0a82c8c/watermill-outbox/forwarder"
)

// TestMySQLRelaysDoNotDeadlock: three ordered relays on MariaDB draining
// 10,000 rows over 200 keys. Claims used to lock the pending index before
// the primary key, acks the primary key first, and the two deadlocked
// ("Error 1213", one to six times a run, retried). Claims now lock by
// primary key in id order, as acks do: no contention is met, and none is
// logged at error level.
func TestMySQLRelaysDoNotDeadlock(t *testing.T) {
	t.Parallel()
	e := newRelayEnv(t, backends[1])
	n := 10000
	e.publish(t, "steady", n, func(i int) string { return fmt.Sprint("key-", i%200) })
	dest := newRecorder()
	logger := newLogs()
	var fwds []*forwarder.Forwarder
	for range 3 {
		f, err := forwarder.NewForwarder(e.store, dest, forwarder.Config{}, logger)
		require.NoError(t, err)
		go func() { _ = f.Run(t.Context()) }()
		t.Cleanup(func() { _ = f.Close() })
		fwds = append(fwds, f)
	}
	dest.waitDistinct(t, n, 120*time.Second)
	waitFor(t, 30*time.Second, "acks written", func() bool { return e.count(t, "1=1") == 0 })
	for _, f := range fwds {
		require.Zero(t, f.Subscriber().Contention(), "contention met")
	}
	require.Empty(t, logger.at(watermill.ErrorLogLevel))
}
